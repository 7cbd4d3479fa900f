use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use ops::Secret;
use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::app::fixture;
use crate::runs::{AttemptValue, NewRun};
use crate::store::RunLiveness;

fn pod(name: &str, uid: &str, status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"namespace": "agents", "name": name, "uid": uid},
        "status": status,
    }))
    .unwrap()
}

fn running(name: &str, uid: &str) -> Pod {
    pod(name, uid, json!({"phase": "Running"}))
}

fn identity(name: &str, uid: &str) -> PodIdentity {
    PodIdentity {
        namespace: "agents".into(),
        name: name.into(),
        uid: uid.into(),
    }
}

fn terminated(container: &str, code: i32, reason: &str) -> serde_json::Value {
    json!({"name": container, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
           "state": {"terminated": {"exitCode": code, "reason": reason}}})
}

#[test]
fn the_ending_comes_from_the_pod_status() {
    assert_eq!(pod_ending(&running("a", "1")), None);
    let evicted = pod(
        "a",
        "1",
        json!({"phase": "Failed", "reason": "Evicted", "message": "node low on memory"}),
    );
    let e = pod_ending(&evicted).unwrap();
    assert_eq!(e.reason, FinalizeReason::Evicted);
    assert!(e.detail.contains("node low on memory"), "{}", e.detail);
    let oom = pod(
        "a",
        "1",
        json!({"phase": "Failed", "containerStatuses": [
            terminated("agent", 137, "OOMKilled")]}),
    );
    let e = pod_ending(&oom).unwrap();
    assert_eq!(e.reason, FinalizeReason::OomKilled);
    assert!(
        e.detail.contains("agent") && e.detail.contains("137"),
        "{}",
        e.detail
    );
    let failed = pod(
        "a",
        "1",
        json!({"phase": "Failed", "containerStatuses": [
            terminated("sidecar", 0, "Completed"), terminated("agent", 3, "Error")]}),
    );
    let e = pod_ending(&failed).unwrap();
    assert_eq!(e.reason, FinalizeReason::Failed);
    assert!(e.detail.contains("code 3 (Error)"), "{}", e.detail);
    let done = pod("a", "1", json!({"phase": "Succeeded"}));
    assert_eq!(
        pod_ending(&done).unwrap().reason,
        FinalizeReason::SucceededWithoutComplete
    );
}

#[test]
fn the_tracker_sees_deletions_by_event_and_by_relist() {
    let t0 = Instant::now();
    let mut t = PodTracker::default();
    let (a, b) = (identity("a", "ua"), identity("b", "ub"));
    // Before the first listing nothing is known: no verdict of "gone".
    assert_eq!(t.verdict(0, &a, t0), Verdict::Alive);
    t.handle(0, Event::Init, t0);
    t.handle(0, Event::InitApply(running("a", "ua")), t0);
    t.handle(0, Event::InitApply(running("b", "ub")), t0);
    t.handle(0, Event::InitDone, t0);
    assert_eq!(t.verdict(0, &a, t0), Verdict::Alive);
    // OOM-killed, then deleted: the reason and the time of the first end stay.
    let t1 = t0 + Duration::from_secs(1);
    let oom = pod(
        "a",
        "ua",
        json!({"phase": "Failed", "containerStatuses": [terminated("agent", 137, "OOMKilled")]}),
    );
    t.handle(0, Event::Apply(oom), t1);
    t.handle(
        0,
        Event::Delete(running("a", "ua")),
        t1 + Duration::from_secs(5),
    );
    match t.verdict(0, &a, t1 + Duration::from_secs(6)) {
        Verdict::Ended(e, since) => {
            assert_eq!(e.reason, FinalizeReason::OomKilled);
            assert_eq!(since, t1);
        }
        v => panic!("{v:?}"),
    }
    // b vanishes while the watch is down: the relist (after a 410) shows it.
    let t2 = t0 + Duration::from_secs(10);
    t.handle(0, Event::Init, t2);
    t.handle(0, Event::InitDone, t2);
    assert_eq!(
        t.verdict(0, &b, t2),
        Verdict::Ended(
            Ending {
                reason: FinalizeReason::Deleted,
                detail: "the pod was deleted".into()
            },
            t2
        )
    );
    // A bound pod never seen by a finished listing counts from when it was missed.
    let c = identity("c", "uc");
    let t3 = t2 + Duration::from_secs(3);
    assert!(matches!(t.verdict(0, &c, t3), Verdict::Ended(_, s) if s == t3));
    assert!(
        matches!(t.verdict(0, &c, t3 + Duration::from_secs(1)), Verdict::Ended(_, s) if s == t3)
    );
    // Forgotten once no run is bound to them.
    t.retain_bound(&HashSet::new());
    assert!(t.gone.is_empty() && t.missing.is_empty());
}

fn cfg(grace: u64, silence: u64) -> ReconcileConfig {
    ReconcileConfig {
        kube: None,
        namespaces: vec!["agents".into()],
        label_selector: DEFAULT_LABEL_SELECTOR.into(),
        grace: Duration::from_secs(grace),
        silence_timeout: Duration::from_secs(silence),
    }
}

#[test]
fn runs_are_due_after_the_grace_period_or_the_silence_timeout() {
    let t0 = Instant::now();
    let mut t = PodTracker::default();
    t.handle(0, Event::Init, t0);
    t.handle(0, Event::InitDone, t0);
    let runs = vec![
        RunLiveness {
            run_id: "gone".into(),
            pod: Some(identity("a", "ua")),
            source: Some(IdentitySource::Claimed),
            last_heartbeat: None,
        },
        RunLiveness {
            run_id: "quiet".into(),
            pod: None,
            source: None,
            last_heartbeat: Some(1_000),
        },
        RunLiveness {
            run_id: "other-ns".into(),
            pod: Some(PodIdentity {
                namespace: "elsewhere".into(),
                ..identity("b", "ub")
            }),
            source: Some(IdentitySource::Claimed),
            last_heartbeat: Some(1_090),
        },
    ];
    let c = cfg(30, 60);
    // Within the grace period and the silence timeout: nothing.
    assert!(due(&runs, &mut t, &c, true, 0, 1_059, t0).is_empty());
    let later = t0 + Duration::from_secs(30);
    let d = due(&runs, &mut t, &c, true, 0, 1_060, later);
    let ids: Vec<_> = d.iter().map(|(id, e)| (id.as_str(), e.reason)).collect();
    assert_eq!(
        ids,
        [
            ("gone", FinalizeReason::Deleted),
            ("quiet", FinalizeReason::Silent)
        ]
    );
    // Silence off: only pods count.
    assert_eq!(
        due(&runs, &mut t, &cfg(30, 0), true, 0, 9_999, later).len(),
        1
    );
    // A restart of bot-bridge counts as a sign of life for silence.
    assert!(due(&runs[1..2], &mut t, &c, true, 1_050, 1_060, later).is_empty());
    // A run whose watcher never heartbeated (older watcher) is never silent.
    let old = [RunLiveness {
        last_heartbeat: None,
        ..runs[1].clone()
    }];
    assert!(due(&old, &mut t, &c, true, 0, 999_999, later).is_empty());
}

fn owner() -> Caller {
    Caller::RunToken(Secret::new("owner-token-".repeat(4)))
}

#[tokio::test]
async fn finalising_posts_the_reason_revokes_the_webhook_and_happens_once() {
    let (state, discord) = fixture::state(fixture::settings());
    let (run, _) = state
        .provision(
            NewRun {
                task_id: "t".into(),
                attempt: AttemptValue::Number(1),
                short_id: "a".into(),
                input_url: None,
                heartbeats: false,
            },
            &owner(),
        )
        .await
        .unwrap();
    state
        .bind_pod(&run.run_id, &run.channel_id, identity("a", "ua"))
        .await
        .unwrap();
    let ending = Ending {
        reason: FinalizeReason::OomKilled,
        detail: "container agent was OOMKilled (exit code 137)".into(),
    };
    assert!(state.finalize(&run.run_id, &ending).await.unwrap());
    assert!(!state.finalize(&run.run_id, &ending).await.unwrap());
    discord.with(|s| {
        assert_eq!(s.posts.len(), 1, "{:?}", s.posts);
        let text = s.posts[0].to_string();
        assert!(
            text.contains("OOMKilled") && text.contains("oom_killed"),
            "{text}"
        );
        assert_eq!(s.posts[0]["allowed_mentions"], json!({"parse": []}));
        assert!(s.webhooks.is_empty());
    });
    let stored = state
        .store()
        .get_run(run.run_id.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RunStatus::Completed);
    assert_eq!(stored.summary.unwrap()["reason"], "oom_killed");
    assert_eq!(
        state
            .metrics()
            .lifecycle
            .finalized_count(FinalizeReason::OomKilled),
        1
    );
    // A late `complete` from the watcher changes nothing.
    state.complete(&run.run_id, None, &owner()).await.unwrap();
    assert_eq!(
        state
            .metrics()
            .lifecycle
            .finalized_count(FinalizeReason::Completed),
        0
    );
    // Heartbeats of an ended run are refused; of someone else's run too.
    assert!(matches!(
        state.heartbeat(&run.run_id, &owner()).await,
        Err(RunsError::RunFinished)
    ));
    assert!(matches!(
        state.heartbeat(&run.run_id, &Caller::Anonymous).await,
        Err(RunsError::Forbidden(_))
    ));
}

#[tokio::test]
async fn a_claimed_pod_never_replaces_a_verified_one() {
    let (state, _) = fixture::state(fixture::settings());
    let store = state.store();
    let (run, _) = state
        .provision(
            NewRun {
                task_id: "t".into(),
                attempt: AttemptValue::Number(1),
                short_id: "b".into(),
                input_url: None,
                heartbeats: false,
            },
            &owner(),
        )
        .await
        .unwrap();
    let id = run.run_id.clone();
    assert!(store
        .bind_pod(
            id.clone(),
            identity("claimed", "u1"),
            IdentitySource::Claimed
        )
        .await
        .unwrap());
    assert!(store
        .bind_pod(
            id.clone(),
            identity("verified", "u2"),
            IdentitySource::Verified
        )
        .await
        .unwrap());
    assert!(!store
        .bind_pod(id.clone(), identity("liar", "u3"), IdentitySource::Claimed)
        .await
        .unwrap());
    store.heartbeat(id.clone(), 4_000_000_000).await.unwrap();
    let live = store.active_liveness().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].pod, Some(identity("verified", "u2")));
    assert_eq!(live[0].source, Some(IdentitySource::Verified));
    assert_eq!(live[0].last_heartbeat, Some(4_000_000_000));
    assert_eq!(
        store.run_pod(id).await.unwrap(),
        Some(identity("verified", "u2"))
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let d = Duration::from_secs(1);
    let err = ReconcileConfig::parse(Some("/nonexistent/kubeconfig"), None, "a=b", d, d)
        .unwrap_err()
        .to_string();
    assert!(err.contains("KUBE_CONFIG"), "{err}");
    let err = ReconcileConfig::parse(None, Some("agents,Bad_NS"), "a=b", d, d)
        .unwrap_err()
        .to_string();
    assert!(err.contains("RECONCILE_NAMESPACES"), "{err}");
    let err = ReconcileConfig::parse(None, None, " ", d, d)
        .unwrap_err()
        .to_string();
    assert!(err.contains("RECONCILE_LABEL_SELECTOR"), "{err}");
    let ok = ReconcileConfig::parse(Some("in-cluster"), Some("a, b,a"), "x=y", d, d).unwrap();
    assert_eq!(ok.kube, Some(KubeSource::InCluster));
    assert_eq!(ok.namespaces, ["a", "b"]);
    assert!(check_pod(&identity("", "u")).is_err());
    assert!(check_pod(&identity("a\n", "u")).is_err());
}
