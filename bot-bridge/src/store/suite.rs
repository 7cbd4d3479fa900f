//! One store test suite, run against every backend: SQLite in memory and
//! Postgres when `AGENTMON_TEST_POSTGRES_URL` names a server (scripts/test
//! starts one; without it the Postgres half prints why it skipped).
//!
//! Each scenario gets two handles on the same data: for Postgres two separate
//! pools, i.e. two replicas; for SQLite two clones of one store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ops::Secret;

use super::{
    CategoryKind, CategoryRecord, HandoffMessage, HandoffOutcome, HandoffStored, IdentitySource,
    Inserted, ListCursor, PodIdentity, RunKey, RunRecord, RunStatus, RunStore, StoredWebhook,
};

type Handle = Arc<dyn RunStore>;

pub(crate) fn run(task: &str, short: &str) -> RunRecord {
    RunRecord {
        run_id: format!("run-{task}-{short}"),
        key: RunKey {
            task_id: task.into(),
            attempt: "1".into(),
            short_id: short.into(),
        },
        channel_id: None,
        webhook_id: None,
        webhook_token: None,
        input_url: None,
        input_secret: Secret::new("s3cr3t".into()),
        token_hash: None,
        status: RunStatus::Active,
        created_at: 100,
        completed_at: None,
        archive_due_at: None,
        summary: None,
        retention_note: None,
    }
}

async fn insert_is_idempotent_on_the_key(a: Handle, b: Handle) {
    assert!(matches!(
        a.insert_run(run("t", "a")).await.unwrap(),
        Inserted::New
    ));
    let mut again = run("t", "a");
    again.run_id = "other".into();
    match b.insert_run(again).await.unwrap() {
        Inserted::Existing(r) => assert_eq!(r.run_id, "run-t-a"),
        Inserted::New => panic!("duplicate key inserted"),
    }
    assert_eq!(a.list_runs(None, 10, None).await.unwrap().len(), 1);
}

async fn concurrent_inserts_of_one_key_make_one_run(a: Handle, b: Handle) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut r = run("race", "k");
            r.run_id = format!("candidate-{i}");
            s.insert_run(r).await.unwrap()
        }));
    }
    let mut new = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Inserted::New) {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    assert_eq!(a.count_runs(RunStatus::Active).await.unwrap(), 1);
}

async fn records_round_trip(a: Handle, b: Handle) {
    a.insert_run(run("t", "a")).await.unwrap();
    let mut r = a.get_run("run-t-a".into()).await.unwrap().unwrap();
    r.status = RunStatus::Completed;
    r.completed_at = Some(120);
    r.archive_due_at = Some(150);
    r.summary = Some(serde_json::json!({"tokens": 3}));
    r.channel_id = Some("42".into());
    r.webhook_id = Some("7".into());
    r.webhook_token = Some(Secret::new("tok".into()));
    r.input_url = Some("http://10.0.0.1:9000".into());
    r.token_hash = Some("abc".into());
    r.retention_note = Some("note".into());
    a.update_run(r).await.unwrap();

    let r = b.find_by_channel("42".into()).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!(r.summary.unwrap()["tokens"], 3);
    assert_eq!(r.input_secret.expose(), "s3cr3t");
    assert_eq!(r.webhook_token.unwrap().expose(), "tok");
    assert_eq!(r.webhook_id.as_deref(), Some("7"));
    assert_eq!(r.input_url.as_deref(), Some("http://10.0.0.1:9000"));
    assert_eq!(r.token_hash.as_deref(), Some("abc"));
    assert_eq!(r.retention_note.as_deref(), Some("note"));
    assert_eq!(r.completed_at, Some(120));
    let key = RunKey {
        task_id: "t".into(),
        attempt: "1".into(),
        short_id: "a".into(),
    };
    assert_eq!(b.find_by_key(key).await.unwrap().unwrap().run_id, "run-t-a");
    assert!(b.get_run("missing".into()).await.unwrap().is_none());
    assert_eq!(b.due_runs(149).await.unwrap().len(), 0);
    assert_eq!(b.due_runs(150).await.unwrap().len(), 1);
    assert_eq!(b.count_runs(RunStatus::Completed).await.unwrap(), 1);
    assert_eq!(b.count_runs(RunStatus::Active).await.unwrap(), 0);
}

async fn list_runs_pages_newest_first(a: Handle, _b: Handle) {
    for (i, short) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let mut r = run("t", short);
        r.created_at = 100 + i64::try_from(i / 2).unwrap();
        if short == "c" {
            r.status = RunStatus::Completed;
        }
        a.insert_run(r).await.unwrap();
    }
    let page = a.list_runs(None, 2, None).await.unwrap();
    let ids: Vec<_> = page.iter().map(|r| r.key.short_id.as_str()).collect();
    assert_eq!(ids, ["e", "d"]);
    let last = page.last().unwrap();
    let after = ListCursor {
        created_at: last.created_at,
        run_id: last.run_id.clone(),
    };
    let page = a.list_runs(None, 10, Some(after)).await.unwrap();
    let ids: Vec<_> = page.iter().map(|r| r.key.short_id.as_str()).collect();
    assert_eq!(ids, ["c", "b", "a"]);
    let active = a
        .list_runs(Some(RunStatus::Active), 10, None)
        .await
        .unwrap();
    assert_eq!(active.len(), 4);
}

async fn categories_and_shared_webhooks_round_trip(a: Handle, b: Handle) {
    let cat = |id: &str, kind, index| CategoryRecord {
        id: id.into(),
        name: format!("Agent Runs {index}"),
        kind,
        index,
    };
    a.put_category(cat("9", CategoryKind::Runs, 1))
        .await
        .unwrap();
    a.put_category(cat("10", CategoryKind::Runs, 2))
        .await
        .unwrap();
    a.put_category(cat("11", CategoryKind::Archive, 1))
        .await
        .unwrap();
    let mut renamed = cat("9", CategoryKind::Runs, 1);
    renamed.name = "Agent Runs".into();
    b.put_category(renamed.clone()).await.unwrap();
    let all = b.categories().await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.contains(&renamed));
    b.remove_category("10".into()).await.unwrap();
    assert_eq!(a.categories().await.unwrap().len(), 2);

    assert!(a.shared_webhook("p".into()).await.unwrap().is_none());
    for token in ["t1", "t2"] {
        a.put_shared_webhook(
            "p".into(),
            StoredWebhook {
                id: "w".into(),
                token: Secret::new(token.into()),
            },
        )
        .await
        .unwrap();
    }
    let w = b.shared_webhook("p".into()).await.unwrap().unwrap();
    assert_eq!((w.id.as_str(), w.token.expose().as_str()), ("w", "t2"));
}

async fn a_claimed_pod_never_replaces_a_verified_one(a: Handle, b: Handle) {
    a.insert_run(run("t", "a")).await.unwrap();
    a.insert_run(run("t", "b")).await.unwrap();
    let pod = |name: &str| PodIdentity {
        namespace: "agents".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    };
    let id = || "run-t-a".to_owned();
    assert!(a
        .bind_pod(id(), pod("p1"), IdentitySource::Claimed)
        .await
        .unwrap());
    assert!(b
        .bind_pod(id(), pod("p2"), IdentitySource::Verified)
        .await
        .unwrap());
    assert!(!a
        .bind_pod(id(), pod("p3"), IdentitySource::Claimed)
        .await
        .unwrap());
    assert_eq!(b.run_pod(id()).await.unwrap(), Some(pod("p2")));
    assert_eq!(b.run_pod("run-t-b".into()).await.unwrap(), None);

    a.heartbeat(id(), 500).await.unwrap();
    b.heartbeat(id(), 400).await.unwrap(); // late arrival never moves it back
    a.heartbeat("run-t-b".into(), 300).await.unwrap();
    let live = b.active_liveness().await.unwrap();
    assert_eq!(live.len(), 2);
    let first = live.iter().find(|l| l.run_id == id()).unwrap();
    assert_eq!(first.last_heartbeat, Some(500));
    assert_eq!(first.source, Some(IdentitySource::Verified));
    assert_eq!(first.pod, Some(pod("p2")));
    let second = live.iter().find(|l| l.run_id == "run-t-b").unwrap();
    assert_eq!(
        (second.pod.clone(), second.last_heartbeat),
        (None, Some(300))
    );
}

async fn provisioning_lock_admits_one_holder_across_handles(a: Handle, b: Handle) {
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let _guard = s.provision_lock().await.unwrap();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Gives any other holder the chance to overlap (not synchronisation:
            // the assertion is that none did).
            tokio::time::sleep(Duration::from_millis(5)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("lock released after each holder")
            .unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

async fn an_interaction_is_claimed_once_across_handles(a: Handle, b: Handle) {
    let mut tasks = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.claim_interaction("1234".into(), 1000).await.unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    assert!(a.claim_interaction("5678".into(), 2000).await.unwrap());
    assert_eq!(b.prune_interactions(1500).await.unwrap(), 1);
    // Pruned claims are forgotten; later ones are kept.
    assert!(a.claim_interaction("1234".into(), 2100).await.unwrap());
    assert!(!a.claim_interaction("5678".into(), 2100).await.unwrap());
}

/// Hand-offs: idempotent by (run, seq) across handles, drained in seq order
/// with dead letters skipped, refused on a finished run unless all known.
async fn handoffs_are_idempotent_and_drain_in_seq_order(a: Handle, b: Handle) {
    a.insert_run(run("t", "h")).await.unwrap();
    let msg = |seq: u64| HandoffMessage {
        seq,
        payload: serde_json::json!({"content": format!("m{seq}")}),
    };
    let first = a
        .put_handoff("run-t-h".into(), vec![msg(3), msg(1), msg(2)], None, 10)
        .await
        .unwrap();
    assert_eq!(
        first,
        HandoffStored::Stored {
            accepted: 3,
            duplicates: 0,
            pending: 3
        }
    );
    let again = b
        .put_handoff("run-t-h".into(), vec![msg(2), msg(4)], Some(None), 11)
        .await
        .unwrap();
    assert_eq!(
        again,
        HandoffStored::Stored {
            accepted: 1,
            duplicates: 1,
            pending: 4
        }
    );
    let runs = b.handoff_runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].pending, runs[0].oldest_pending_at), (4, Some(10)));
    assert_eq!(runs[0].complete, Some(None));
    let mut order = Vec::new();
    while let Some(m) = a.next_handoff("run-t-h".into()).await.unwrap() {
        order.push(m.seq);
        let outcome = if m.seq == 2 {
            HandoffOutcome::Rejected
        } else {
            HandoffOutcome::Delivered
        };
        b.mark_handoff("run-t-h".into(), m.seq, outcome, 20)
            .await
            .unwrap();
    }
    assert_eq!(order, [1, 2, 3, 4]);
    let mut done = run("t", "h");
    done.status = RunStatus::Completed;
    a.update_run(done).await.unwrap();
    assert_eq!(
        b.put_handoff("run-t-h".into(), vec![msg(1), msg(4)], None, 30)
            .await
            .unwrap(),
        HandoffStored::Stored {
            accepted: 0,
            duplicates: 2,
            pending: 0
        }
    );
    assert_eq!(
        b.put_handoff("run-t-h".into(), vec![msg(5)], None, 30)
            .await
            .unwrap(),
        HandoffStored::Finished { new: 1 }
    );
    assert_eq!(
        a.put_handoff("nope".into(), vec![msg(1)], None, 30)
            .await
            .unwrap(),
        HandoffStored::UnknownRun
    );
    // The channel's pace: the first one stored wins, on either handle.
    assert!(a.handoff_pacing("run-t-h".into()).await.unwrap().is_empty());
    a.pace_handoff("run-t-h".into(), vec![1000, 2000], 30)
        .await
        .unwrap();
    b.pace_handoff("run-t-h".into(), vec![5], 31).await.unwrap();
    assert_eq!(
        b.handoff_pacing("run-t-h".into()).await.unwrap(),
        [1000, 2000]
    );
    // Kept while the run is completed (a retry is still recognised), gone
    // once retention archived it.
    assert_eq!(a.prune_handoffs().await.unwrap(), 0);
    let mut archived = run("t", "h");
    archived.status = RunStatus::Archived;
    a.update_run(archived).await.unwrap();
    assert_eq!(b.prune_handoffs().await.unwrap(), 4);
    assert!(b.handoff_runs().await.unwrap().is_empty());
    assert_eq!(a.next_handoff("run-t-h".into()).await.unwrap(), None);
    assert!(a.handoff_pacing("run-t-h".into()).await.unwrap().is_empty());
}

/// A hand-off arriving while its run is finished waits, and then finds the
/// run finished instead of being stored under it (where nothing would deliver
/// it); another run's hand-off does not wait, and neither waits on the
/// provisioning lock.
async fn a_handoff_waits_for_its_runs_finish_only(a: Handle, b: Handle) {
    a.insert_run(run("t", "fin")).await.unwrap();
    a.insert_run(run("t", "other")).await.unwrap();
    let msg = HandoffMessage {
        seq: 1,
        payload: serde_json::json!({"content": "m1"}),
    };
    let provisioning = a.provision_lock().await.unwrap();
    let finishing = a.finish_lock("run-t-fin".into()).await.unwrap();
    // Another run's hand-off: at once, provisioning lock or not.
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        b.put_handoff("run-t-other".into(), vec![msg.clone()], None, 10),
    )
    .await
    .expect("another run's hand-off never waits on this finish")
    .unwrap();
    assert!(matches!(other, HandoffStored::Stored { accepted: 1, .. }));
    let (b2, m2) = (b.clone(), msg.clone());
    let mut waiting =
        tokio::spawn(async move { b2.put_handoff("run-t-fin".into(), vec![m2], None, 11).await });
    // Bounded look (not synchronisation): it must still be waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a hand-off was stored while its run was being finished"
    );
    let mut done = run("t", "fin");
    done.status = RunStatus::Completed;
    a.update_run(done).await.unwrap();
    drop(finishing);
    drop(provisioning);
    let after = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the hand-off goes on once the finish ends")
        .unwrap()
        .unwrap();
    assert_eq!(after, HandoffStored::Finished { new: 1 });
    // The lock is free again: a second finish of the run does not wait.
    tokio::time::timeout(Duration::from_secs(10), b.finish_lock("run-t-fin".into()))
        .await
        .expect("finish lock released")
        .unwrap();
}

/// The guild's buckets move with the provisioning lock: what one replica
/// leaves is what the next reads, counted down on the store's clock, and a
/// new snapshot replaces the old one whole.
async fn discord_buckets_pass_from_one_handle_to_the_next(a: Handle, b: Handle) {
    use super::BucketSnapshot;
    assert!(b.discord_buckets().await.unwrap().is_empty());
    let open = BucketSnapshot {
        route: "POST /guilds/{guild_id}/channels 1".into(),
        limit: Some(10),
        remaining: Some(3),
        reset_after: Some(Duration::from_secs(30)),
        blocked_for: None,
    };
    let blocked = BucketSnapshot {
        route: "GET /guilds/{guild_id}/channels 1".into(),
        limit: None,
        remaining: None,
        reset_after: None,
        blocked_for: Some(Duration::from_secs(20)),
    };
    let ended = BucketSnapshot {
        route: "DELETE /webhooks/{webhook_id} 9".into(),
        limit: Some(5),
        remaining: Some(0),
        reset_after: Some(Duration::from_millis(1)),
        blocked_for: None,
    };
    a.put_discord_buckets(vec![open.clone(), blocked.clone(), ended])
        .await
        .unwrap();
    // Gives the 1 ms window time to end (not synchronisation: the assertion
    // is that an ended window is not handed on).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let got = b.discord_buckets().await.unwrap();
    let routes: Vec<&str> = got.iter().map(|s| s.route.as_str()).collect();
    assert_eq!(routes, [blocked.route.as_str(), open.route.as_str()]);
    let (got_blocked, got_open) = (&got[0], &got[1]);
    assert_eq!((got_open.limit, got_open.remaining), (Some(10), Some(3)));
    let reset = got_open.reset_after.unwrap();
    assert!(
        reset <= Duration::from_secs(30) && reset > Duration::from_secs(20),
        "{reset:?}"
    );
    let block = got_blocked.blocked_for.unwrap();
    assert!(
        block <= Duration::from_secs(20) && block > Duration::from_secs(10),
        "{block:?}"
    );
    assert_eq!(got_blocked.reset_after, None);

    b.put_discord_buckets(vec![blocked.clone()]).await.unwrap();
    let got = a.discord_buckets().await.unwrap();
    assert_eq!(got.len(), 1, "a snapshot replaces the last one whole");
    assert_eq!(got[0].route, blocked.route);
}

/// Discord's global budget shared by every replica: concurrent
/// reservations from both handles each get their own slot, one `interval`
/// apart, so no second holds more than the budget.
async fn global_reservations_are_spaced_across_handles(a: Handle, b: Handle) {
    let interval = Duration::from_millis(20);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let wait = s.reserve_discord_request(interval).await.unwrap();
            std::time::SystemTime::now() + wait
        }));
    }
    let mut slots = Vec::new();
    for t in tasks {
        slots.push(t.await.unwrap());
    }
    slots.sort();
    // 40 slots 20 ms apart span 780 ms; the same slot handed out twice (or
    // each handle counting alone) would bunch them up. The margin covers a
    // task answered late (each slot is read as its answer time + the wait).
    let span = slots[39].duration_since(slots[0]).unwrap_or_default();
    assert!(span >= Duration::from_millis(600), "{span:?}");

    // However far ahead the budget was booked (a clock stepped back), no
    // request waits longer than the REST client's longest wait.
    for _ in 0..5 {
        a.reserve_discord_request(Duration::from_secs(30))
            .await
            .unwrap();
    }
    let wait = b.reserve_discord_request(interval).await.unwrap();
    assert!(wait <= Duration::from_secs(60), "{wait:?}");
}

async fn ping_succeeds_on_a_writable_store(a: Handle, _b: Handle) {
    a.ping().await.unwrap();
}

/// Fresh SQLite stores: two handles on one in-memory database.
async fn sqlite() -> (Handle, Handle) {
    let s = super::sqlite::SqliteStore::memory().unwrap();
    (Arc::new(s.clone()), Arc::new(s))
}

/// Two replicas' stores on a fresh Postgres database, or `None` (and why)
/// when no test server is configured.
async fn postgres() -> Option<(Handle, Handle)> {
    let url = super::postgres::test_support::fresh_database()
        .await
        .unwrap()?;
    let a = super::postgres::PostgresStore::connect(&url, 4)
        .await
        .unwrap();
    let b = super::postgres::PostgresStore::connect(&url, 4)
        .await
        .unwrap();
    Some((Arc::new(a), Arc::new(b)))
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let (a, b) = super::sqlite().await;
                    super::$name(a, b).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((a, b)) = super::postgres().await else {
                        return;
                    };
                    super::$name(a, b).await;
                }
            )*
        }
    };
}

suite!(
    insert_is_idempotent_on_the_key,
    concurrent_inserts_of_one_key_make_one_run,
    records_round_trip,
    list_runs_pages_newest_first,
    categories_and_shared_webhooks_round_trip,
    a_claimed_pod_never_replaces_a_verified_one,
    provisioning_lock_admits_one_holder_across_handles,
    an_interaction_is_claimed_once_across_handles,
    handoffs_are_idempotent_and_drain_in_seq_order,
    a_handoff_waits_for_its_runs_finish_only,
    ping_succeeds_on_a_writable_store,
    discord_buckets_pass_from_one_handle_to_the_next,
    global_reservations_are_spaced_across_handles,
);
