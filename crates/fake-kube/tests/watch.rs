//! kube-runtime's watcher and the raw list/watch API against the fake: what
//! a pod reconciler sees when pods come and go, when its watch stream is
//! cut, and when its resourceVersion is compacted away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{cluster, wait_for};
use fake_kube::{DropMode, NewPod};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, VersionMatch, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

const NS: &str = "agents";
const SELECTOR: &str = "app=agent";

/// What a reconciler knows, rebuilt from watcher events the way it must
/// be: a relist replaces the whole set, and a pod missing from it was
/// deleted while nobody watched.
#[derive(Debug, Clone, Default)]
struct View {
    /// Name → phase.
    pods: BTreeMap<String, String>,
    /// Pods seen going away (DELETED, or absent from a relist).
    deleted: BTreeSet<String>,
    /// Completed initial lists.
    lists: u32,
    /// Errors the watcher reported (a 410 is one).
    errors: Vec<String>,
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Runs `watcher` on the agent pods, publishing the [`View`].
fn watch_agents(client: kube::Client) -> tokio::sync::watch::Receiver<View> {
    let (tx, rx) = tokio::sync::watch::channel(View::default());
    let api: Api<Pod> = Api::namespaced(client, NS);
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default().labels(SELECTOR)).boxed();
        let mut listing: BTreeMap<String, String> = BTreeMap::new();
        while let Some(item) = stream.next().await {
            tx.send_modify(|v| match item {
                Ok(watcher::Event::Init) => listing.clear(),
                Ok(watcher::Event::InitApply(p)) => {
                    listing.insert(p.name_any(), phase(&p));
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = std::mem::take(&mut listing);
                    for gone in v.pods.keys().filter(|k| !fresh.contains_key(*k)) {
                        v.deleted.insert(gone.clone());
                    }
                    v.pods = fresh;
                    v.lists += 1;
                }
                Ok(watcher::Event::Apply(p)) => {
                    v.pods.insert(p.name_any(), phase(&p));
                }
                Ok(watcher::Event::Delete(p)) => {
                    v.pods.remove(&p.name_any());
                    v.deleted.insert(p.name_any());
                }
                Err(e) => v.errors.push(e.to_string()),
            });
        }
    });
    rx
}

/// Makes sure the watcher is watching (not between a relist and its next
/// watch): a new pod shows up through its stream. Steering that follows
/// then reaches that stream.
async fn watching(
    fake: &fake_kube::FakeKube,
    view: &mut tokio::sync::watch::Receiver<View>,
    probe: &str,
) {
    let lists = view.borrow().lists;
    fake.create_pod(agent(probe)).unwrap();
    let v = wait_for(view, probe, |v| v.pods.contains_key(probe)).await;
    assert_eq!(v.lists, lists, "{probe} came through the watch, not a list");
}

/// The agent pods the view holds, probes left out.
fn agents(v: &View) -> Vec<&str> {
    v.pods
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with("probe"))
        .collect()
}

fn agent(name: &str) -> NewPod {
    NewPod::new(NS, name).label("app", "agent")
}

#[tokio::test]
async fn watcher_follows_pods_through_a_cut_stream_and_a_410_without_missing_a_deletion() {
    let c = cluster().await;
    c.fake.create_pod(agent("a")).unwrap();
    c.fake.create_pod(agent("b")).unwrap();
    c.fake.create_pod(NewPod::new(NS, "not-an-agent")).unwrap();
    c.fake
        .create_pod(NewPod::new("elsewhere", "x").label("app", "agent"))
        .unwrap();

    let mut view = watch_agents(c.client.clone());
    let v = wait_for(&mut view, "initial list", |v| v.lists == 1).await;
    assert_eq!(
        v.pods.keys().collect::<Vec<_>>(),
        ["a", "b"],
        "selector and namespace apply"
    );

    c.fake.run_pod(NS, "a").unwrap();
    wait_for(&mut view, "a running", |v| {
        v.pods.get("a").is_some_and(|p| p == "Running")
    })
    .await;
    c.fake.create_pod(agent("c")).unwrap();
    wait_for(&mut view, "c added", |v| v.pods.contains_key("c")).await;

    // The stream is cut and, before the client is back, a is removed: the
    // re-watch from its resourceVersion replays the deletion, no relist.
    c.fake.with_state(|s| {
        s.drop_watches(DropMode::Abort);
        s.remove_pod(NS, "a").unwrap();
    });
    let v = wait_for(&mut view, "a deleted after the cut", |v| {
        v.deleted.contains("a")
    })
    .await;
    assert_eq!(v.lists, 1, "resumed from its resourceVersion: {v:?}");

    // Same with a clean close (a server-side timeout).
    c.fake.with_state(|s| {
        s.drop_watches(DropMode::Close);
        s.remove_pod(NS, "c").unwrap();
    });
    wait_for(&mut view, "c deleted after the close", |v| {
        v.deleted.contains("c")
    })
    .await;

    // The stream ends, b is deleted and d created, and the history is
    // compacted before the client is back: its resourceVersion is gone, the
    // re-watch gets 410, and only a relist shows that b went away.
    c.fake.with_state(|s| {
        s.drop_watches(DropMode::Close);
        s.remove_pod(NS, "b").unwrap();
        s.create_pod(agent("d").into_pod()).unwrap();
        s.compact();
    });
    let v = wait_for(&mut view, "relist after 410", |v| v.lists == 2).await;
    assert!(v.deleted.contains("b"), "b's deletion is not missed: {v:?}");
    assert_eq!(agents(&v), ["d"]);
    assert!(
        v.errors
            .iter()
            .any(|e| e.contains("410") || e.contains("too old")),
        "the 410 was reported: {:?}",
        v.errors
    );

    // An open watch that falls behind the compaction gets the 410 too.
    watching(&c.fake, &mut view, "probe-1").await;
    c.fake.with_state(|s| {
        s.pause_watches(true);
        s.create_pod(agent("e").into_pod()).unwrap();
        s.remove_pod(NS, "d").unwrap();
        s.compact();
        s.pause_watches(false);
    });
    let v = wait_for(&mut view, "relist after an open watch's 410", |v| {
        v.lists == 3
    })
    .await;
    assert!(v.deleted.contains("d"));
    assert_eq!(agents(&v), ["e"]);

    // And so does one the server expires outright.
    watching(&c.fake, &mut view, "probe-2").await;
    c.fake.expire_watches();
    wait_for(&mut view, "relist after expiry", |v| v.lists == 4).await;
    assert!(c.fake.stats().expired >= 3, "{:?}", c.fake.stats());
}

#[tokio::test]
async fn raw_watch_speaks_the_apiserver_protocol() {
    let c = cluster().await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    c.fake.create_pod(agent("a")).unwrap();
    let list = api
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();

    let wp = WatchParams::default().labels(SELECTOR).timeout(30);
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    c.fake.create_pod(agent("b")).unwrap();
    c.fake
        .update_pod(NS, "a", |p| {
            p.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("app".into(), "other".into());
        })
        .unwrap();
    c.fake.send_bookmarks();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.try_next().await.unwrap().expect("stream open") {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.name_any())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.name_any())),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.types.kind, "Pod");
                assert!(
                    b.metadata.resource_version.parse::<u64>().unwrap()
                        > rv.parse::<u64>().unwrap()
                );
                seen.push("BOOKMARK".into());
            }
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    // a stopped matching the selector: the watch says DELETED, as the
    // apiserver does.
    assert_eq!(seen, ["ADDED b", "DELETED a", "BOOKMARK"]);

    // A watch from a compacted resourceVersion: HTTP 200, then an ERROR
    // event carrying a 410 Expired Status.
    c.fake.compact();
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        stream.try_next().await.unwrap().is_none(),
        "the stream ends after it"
    );
}

#[tokio::test]
async fn lists_page_and_honour_resource_versions() {
    let c = cluster().await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    for i in 0..5 {
        c.fake.create_pod(agent(&format!("p{i}"))).unwrap();
    }
    let before = api.list(&ListParams::default()).await.unwrap();
    let rv = before.metadata.resource_version.clone().unwrap();

    // Pages of 2 are served at one resourceVersion even while pods change.
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    c.fake.remove_pod(NS, "p4").unwrap();
    let mut names: Vec<String> = first.items.iter().map(ResourceExt::name_any).collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        names.extend(page.items.iter().map(ResourceExt::name_any));
        token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
    }
    assert_eq!(
        names,
        ["p0", "p1", "p2", "p3", "p4"],
        "a consistent snapshot"
    );

    // Exact resourceVersion: the state then; a compacted one: 410.
    let exact = ListParams::default().at(&rv).matching(VersionMatch::Exact);
    assert_eq!(api.list(&exact).await.unwrap().items.len(), 5);
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
    c.fake.compact();
    match api.list(&exact).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }

    // A bad selector is a 400, never "everything".
    match api.list(&ListParams::default().labels("app in oops")).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }
    // Get by name, and 404 NotFound for a missing pod.
    assert_eq!(api.get("p0").await.unwrap().name_any(), "p0");
    match api.get("p4").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404, got {other:?}"),
    }
    // Cluster-wide list.
    let all: Api<Pod> = Api::all(c.client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
}

#[tokio::test]
async fn pod_lifecycle_reads_as_the_kubelet_writes_it() {
    let c = cluster().await;
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    for name in ["oom", "evicted", "done", "doomed"] {
        c.fake.create_pod(agent(name)).unwrap();
        c.fake.run_pod(NS, name).unwrap();
    }
    c.fake.oom_kill(NS, "oom").unwrap();
    c.fake.evict(NS, "evicted").unwrap();
    c.fake.terminate_pod(NS, "done", 0, "Completed").unwrap();
    c.fake.delete_pod(NS, "doomed", 30).unwrap();

    let oom = api.get("oom").await.unwrap();
    let status = oom.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (137, Some("OOMKilled"))
    );

    let evicted = api.get("evicted").await.unwrap().status.unwrap();
    assert_eq!(
        (evicted.phase.as_deref(), evicted.reason.as_deref()),
        (Some("Failed"), Some("Evicted"))
    );
    assert_eq!(
        api.get("done")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Succeeded")
    );

    let doomed = api.get("doomed").await.unwrap();
    assert!(doomed.metadata.deletion_timestamp.is_some());
    assert_eq!(doomed.metadata.deletion_grace_period_seconds, Some(30));
    c.fake.remove_pod(NS, "doomed").unwrap();
    assert!(api.get_opt("doomed").await.unwrap().is_none());
}

#[tokio::test]
async fn streaming_list_watch_sends_initial_events_then_follows() {
    let c = cluster().await;
    c.fake.create_pod(agent("a")).unwrap();
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let config = watcher::Config::default()
        .labels(SELECTOR)
        .streaming_lists();
    let mut stream = watcher(api, config).boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while !seen.contains(&"apply b".to_owned()) {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .unwrap();
        match item {
            watcher::Event::Init => seen.push("init".into()),
            watcher::Event::InitApply(p) => seen.push(format!("init {}", p.name_any())),
            watcher::Event::InitDone => {
                seen.push("done".into());
                c.fake.create_pod(agent("b")).unwrap();
            }
            watcher::Event::Apply(p) => seen.push(format!("apply {}", p.name_any())),
            watcher::Event::Delete(p) => seen.push(format!("delete {}", p.name_any())),
        }
    }
    assert_eq!(seen, ["init", "init a", "done", "apply b"]);
}

/// The same scenario driven only through `/_admin` over HTTP, as an e2e
/// test steering the `fake-kube` binary would: pausing the watches makes
/// "cut, delete, compact" one step for the client.
#[tokio::test]
async fn admin_http_pause_makes_cut_delete_compact_one_step() {
    let c = cluster().await;
    c.fake.create_pod(agent("a")).unwrap();
    c.fake.create_pod(agent("b")).unwrap();
    let mut view = watch_agents(c.client.clone());
    wait_for(&mut view, "initial list", |v| v.lists == 1).await;
    watching(&c.fake, &mut view, "probe-1").await;

    let http = reqwest::Client::new();
    let post = |path: &str| http.post(c.fake.admin_url(path)).send();
    assert!(post("watches/pause").await.unwrap().status().is_success());
    let r = http
        .post(c.fake.admin_url("watches/drop"))
        .json(&serde_json::json!({"mode": "abort"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .delete(c.fake.admin_url("pods/agents/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(post("watches/resume").await.unwrap().status().is_success());
    let v = wait_for(&mut view, "a deleted", |v| v.deleted.contains("a")).await;
    assert_eq!(v.lists, 1, "replayed from history, no relist");

    assert!(post("watches/pause").await.unwrap().status().is_success());
    let r = http
        .delete(c.fake.admin_url("pods/agents/b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(post("compact").await.unwrap().status().is_success());
    assert!(post("watches/resume").await.unwrap().status().is_success());
    let v = wait_for(&mut view, "relist after 410", |v| v.lists == 2).await;
    assert!(v.deleted.contains("b"), "{v:?}");
    assert!(agents(&v).is_empty(), "{v:?}");
}
