use super::*;
use crate::store::suite::run;

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_version SET version = version + 1", [])
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

#[tokio::test]
async fn survives_reopen_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_run(run("t", "a")).await.unwrap();
        let mut r = s.get_run("run-t-a".into()).await.unwrap().unwrap();
        r.status = RunStatus::Completed;
        r.archive_due_at = Some(150);
        r.summary = Some(serde_json::json!({"tokens": 3}));
        r.channel_id = Some("42".into());
        s.update_run(r).await.unwrap();
        s.put_category(CategoryRecord {
            id: "9".into(),
            name: "Agent Runs".into(),
            kind: CategoryKind::Runs,
            index: 1,
        })
        .await
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let r = s.find_by_channel("42".into()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.summary.unwrap()["tokens"], 3);
    assert_eq!(r.input_secret.expose(), "s3cr3t");
    assert_eq!(s.due_runs(149).await.unwrap().len(), 0);
    assert_eq!(s.due_runs(150).await.unwrap().len(), 1);
    assert_eq!(s.categories().await.unwrap().len(), 1);
    assert_eq!(s.count_runs(RunStatus::Completed).await.unwrap(), 1);
}

#[cfg(unix)]
#[tokio::test]
async fn database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    // A file left world-readable by an older version is fixed at open.
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = SqliteStore::open(&path).unwrap();
    s.insert_run(run("t", "a")).await.unwrap();
    let mut seen = 0;
    for name in ["b.db", "b.db-wal", "b.db-shm"] {
        let p = dir.path().join(name);
        if let Ok(meta) = std::fs::metadata(&p) {
            seen += 1;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    assert!(seen >= 2, "WAL files expected beside the database");
}

#[tokio::test]
async fn ping_fails_while_another_process_holds_the_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let s = SqliteStore::open(&path).unwrap();
    s.ping().await.unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Reads still work in WAL mode: a plain SELECT would call this healthy.
    assert_eq!(s.count_runs(RunStatus::Active).await.unwrap(), 0);
    let err = s.ping().await.unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    other.execute_batch("ROLLBACK").unwrap();
    s.ping().await.unwrap();
    // The check left no transaction open and restored the normal wait.
    s.insert_run(run("t", "a")).await.unwrap();
}

#[test]
fn debug_of_a_record_hides_secrets() {
    let mut r = run("t", "a");
    r.webhook_token = Some(Secret::new("tok-very-secret".into()));
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("s3cr3t") && !shown.contains("tok-very-secret"),
        "{shown}"
    );
}

fn msgs(seqs: &[u64]) -> Vec<HandoffMessage> {
    seqs.iter()
        .map(|&seq| HandoffMessage {
            seq,
            payload: serde_json::json!({"content": format!("m{seq}")}),
        })
        .collect()
}

fn stored(accepted: u64, duplicates: u64, pending: u64) -> HandoffStored {
    HandoffStored::Stored {
        accepted,
        duplicates,
        pending,
    }
}

#[tokio::test]
async fn a_handoff_is_idempotent_by_run_and_seq() {
    let s = SqliteStore::memory().unwrap();
    let r = run("t", "a");
    s.insert_run(r.clone()).await.unwrap();
    let id = || r.run_id.clone();
    assert_eq!(
        s.put_handoff(id(), msgs(&[1, 2, 3]), None, 100)
            .await
            .unwrap(),
        stored(3, 0, 3)
    );
    // A retry overlapping the first: only 4 and 5 are new, and the stored
    // payload of 2 is not replaced by the retry's.
    let mut retry = msgs(&[2, 3, 4, 5]);
    retry[0].payload = serde_json::json!({"content": "changed"});
    assert_eq!(
        s.put_handoff(id(), retry, Some(None), 101).await.unwrap(),
        stored(2, 2, 5)
    );
    s.mark_handoff(id(), 1, HandoffOutcome::Delivered, 102)
        .await
        .unwrap();
    let next = s.next_handoff(id()).await.unwrap().unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(next.payload["content"], "m2");
    // A delivered seq stays known: handed off again, it is a duplicate.
    assert_eq!(
        s.put_handoff(id(), msgs(&[1]), None, 103).await.unwrap(),
        stored(0, 1, 4)
    );
    assert_eq!(
        s.put_handoff("nope".into(), msgs(&[1]), None, 103)
            .await
            .unwrap(),
        HandoffStored::UnknownRun
    );
}

#[tokio::test]
async fn pending_messages_come_in_seq_order_skipping_dead_letters() {
    let s = SqliteStore::memory().unwrap();
    let r = run("t", "a");
    s.insert_run(r.clone()).await.unwrap();
    let id = || r.run_id.clone();
    s.put_handoff(id(), msgs(&[10, 30]), None, 100)
        .await
        .unwrap();
    // A later request fills a gap: delivery still follows seq.
    s.put_handoff(id(), msgs(&[20]), None, 101).await.unwrap();
    let mut order = Vec::new();
    while let Some(m) = s.next_handoff(id()).await.unwrap() {
        order.push(m.seq);
        let outcome = if m.seq == 20 {
            HandoffOutcome::Rejected
        } else {
            HandoffOutcome::Delivered
        };
        s.mark_handoff(id(), m.seq, outcome, 102).await.unwrap();
    }
    assert_eq!(order, [10, 20, 30]);
    let conn = lock(&s.conn);
    let kept: Vec<(i64, String, Option<String>)> = conn
        .prepare("SELECT seq, state, payload FROM handoff_messages ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // The dead letter keeps its payload for a person; delivered ones not.
    assert_eq!(kept[0], (10, "delivered".into(), None));
    assert_eq!(kept[1].1, "rejected");
    assert!(kept[1].2.as_deref().unwrap().contains("m20"));
    assert_eq!(kept[2], (30, "delivered".into(), None));
}

#[tokio::test]
async fn handoff_runs_lists_pending_and_unfinished_completions() {
    let s = SqliteStore::memory().unwrap();
    let (a, b, c) = (run("t", "a"), run("t", "b"), run("t", "c"));
    for r in [&a, &b, &c] {
        s.insert_run(r.clone()).await.unwrap();
    }
    s.put_handoff(a.run_id.clone(), msgs(&[1, 2]), None, 200)
        .await
        .unwrap();
    let summary = serde_json::json!({"events": 3});
    s.put_handoff(
        b.run_id.clone(),
        msgs(&[7]),
        Some(Some(summary.clone())),
        100,
    )
    .await
    .unwrap();
    // A second `complete` does not replace the first.
    s.put_handoff(b.run_id.clone(), vec![], Some(None), 150)
        .await
        .unwrap();
    let runs = s.handoff_runs().await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].run_id, b.run_id, "oldest pending first");
    assert_eq!(runs[0].complete, Some(Some(summary)));
    assert_eq!((runs[1].pending, runs[1].oldest_pending_at), (2, Some(200)));
    assert_eq!(runs[1].complete, None);

    // Delivered but not completed yet: still listed (the drainer completes it).
    s.mark_handoff(b.run_id.clone(), 7, HandoffOutcome::Delivered, 300)
        .await
        .unwrap();
    let runs = s.handoff_runs().await.unwrap();
    let entry = runs.iter().find(|r| r.run_id == b.run_id).unwrap();
    assert_eq!((entry.pending, entry.oldest_pending_at), (0, None));
    let mut done = b.clone();
    done.status = RunStatus::Completed;
    s.update_run(done).await.unwrap();
    let runs = s.handoff_runs().await.unwrap();
    assert!(runs.iter().all(|r| r.run_id != b.run_id), "{runs:?}");

    // A completed run takes no new message; a retry of known ones is fine.
    assert_eq!(
        s.put_handoff(b.run_id.clone(), msgs(&[7, 8, 9]), None, 400)
            .await
            .unwrap(),
        HandoffStored::Finished { new: 2 }
    );
    assert_eq!(
        s.put_handoff(b.run_id.clone(), msgs(&[7]), None, 400)
            .await
            .unwrap(),
        stored(0, 1, 0)
    );
    assert!(s.next_handoff(b.run_id.clone()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_handoff_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let r = run("t", "a");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_run(r.clone()).await.unwrap();
        s.put_handoff(r.run_id.clone(), msgs(&[1, 2]), Some(None), 100)
            .await
            .unwrap();
        s.mark_handoff(r.run_id.clone(), 1, HandoffOutcome::Delivered, 101)
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.next_handoff(r.run_id.clone()).await.unwrap().unwrap().seq,
        2
    );
    assert_eq!(s.handoff_runs().await.unwrap()[0].complete, Some(None));
}
