//! Events (kube-runtime's Recorder and core/v1) and Leases through the
//! real kube client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{cluster, DEADLINE};
use fake_kube::{EventApi, NewPod};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::runtime::events::{Event as RecorderEvent, EventType, Recorder, Reporter};
use kube::{Api, Resource};

#[tokio::test]
async fn recorder_events_land_on_the_pod_and_read_back() {
    let c = cluster().await;
    let pod = c.fake.create_pod(NewPod::new("agents", "agent-1")).unwrap();
    let recorder = Recorder::new(
        c.client.clone(),
        Reporter {
            controller: "agentmon-bot-bridge".into(),
            instance: Some("bot-bridge-0".into()),
        },
    );
    let provisioned = RecorderEvent {
        type_: EventType::Normal,
        reason: "ChannelProvisioned".into(),
        note: Some("channel #run-1 ready".into()),
        action: "Provision".into(),
        secondary: None,
    };
    let reference = pod.object_ref(&());
    recorder.publish(&provisioned, &reference).await.unwrap();
    // The same event again: the Recorder patches it into a series.
    recorder.publish(&provisioned, &reference).await.unwrap();

    let events = c
        .fake
        .wait_for_events(DEADLINE, |e| e.iter().any(|e| e.writes == 2))
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.api, EventApi::EventsV1);
    assert_eq!(e.reason(), Some("ChannelProvisioned"));
    assert_eq!(e.note(), Some("channel #run-1 ready"));
    assert_eq!(e.type_(), Some("Normal"));
    assert_eq!(e.regarding_key().as_deref(), Some("Pod/agents/agent-1"));
    assert_eq!(e.object["series"]["count"], 2);
    assert_eq!(
        e.regarding().unwrap()["uid"].as_str(),
        pod.metadata.uid.as_deref(),
        "the event names the pod by UID"
    );

    // Read back through the API.
    let api: Api<Event> = Api::namespaced(c.client.clone(), "agents");
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].reporting_controller.as_deref(),
        Some("agentmon-bot-bridge")
    );

    // events.k8s.io validation: no reportingController is a 422.
    let mut bad = listed.items[0].clone();
    bad.metadata = ObjectMeta {
        name: Some("bad".into()),
        ..ObjectMeta::default()
    };
    bad.reporting_controller = None;
    match api.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("expected 422, got {other:?}"),
    }
}

#[tokio::test]
async fn core_events_are_stored_too() {
    let c = cluster().await;
    let api: Api<CoreEvent> = Api::namespaced(c.client.clone(), "agents");
    let e = CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some("agent-1.".into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("agents".into()),
            name: Some("agent-1".into()),
            ..ObjectReference::default()
        },
        reason: Some("RunFinalized".into()),
        message: Some("pod OOMKilled".into()),
        type_: Some("Warning".into()),
        ..CoreEvent::default()
    };
    let created = api.create(&PostParams::default(), &e).await.unwrap();
    assert!(created.metadata.name.unwrap().starts_with("agent-1."));
    let events = c.fake.events();
    assert_eq!(events[0].api, EventApi::CoreV1);
    assert_eq!(events[0].note(), Some("pod OOMKilled"));
    assert_eq!(
        events[0].regarding_key().as_deref(),
        Some("Pod/agents/agent-1")
    );
    // An event about an object in another namespace is refused.
    let mut elsewhere = e.clone();
    elsewhere.involved_object.namespace = Some("other".into());
    assert!(api
        .create(&PostParams::default(), &elsewhere)
        .await
        .is_err());
}

fn lease(holder: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("bot-bridge-leader".into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }),
    }
}

#[tokio::test]
async fn leases_take_turns_by_resource_version() {
    let c = cluster().await;
    let api: Api<Lease> = Api::namespaced(c.client.clone(), "agentmon");
    let pp = PostParams::default();

    let held = api.create(&pp, &lease("replica-a")).await.unwrap();
    let rv_a = held.metadata.resource_version.clone().unwrap();
    match api.create(&pp, &lease("replica-b")).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected 409 AlreadyExists, got {other:?}"),
    }

    // Both replicas read the same version; the first write wins, the
    // second gets 409 Conflict and must re-read.
    let mut renew = api.get("bot-bridge-leader").await.unwrap();
    let mut steal = renew.clone();
    renew.spec.as_mut().unwrap().lease_transitions = Some(0);
    let renewed = api.replace("bot-bridge-leader", &pp, &renew).await.unwrap();
    assert_ne!(
        renewed.metadata.resource_version.as_deref(),
        Some(rv_a.as_str())
    );
    steal.spec.as_mut().unwrap().holder_identity = Some("replica-b".into());
    match api.replace("bot-bridge-leader", &pp, &steal).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(s.message.contains("the object has been modified"));
        }
        other => panic!("expected 409 Conflict, got {other:?}"),
    }
    // Without a resourceVersion an update is invalid.
    let mut blind = lease("replica-b");
    blind.metadata.resource_version = None;
    match api.replace("bot-bridge-leader", &pp, &blind).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422),
        other => panic!("expected 422, got {other:?}"),
    }
    let leases = c.fake.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        leases[0].spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("replica-a")
    );
    assert_eq!(c.fake.stats().lease_conflicts, 1);

    // Missing lease: 404, as leader election expects before the first create.
    match api.get("nope").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
}
