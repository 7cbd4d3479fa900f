//! The binary: `--help`, the JSON listening line, the kubeconfig it writes,
//! the `/_admin` HTTP API driving a scenario, exit 0 on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::config_from;
use fake_support::testing;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::{json, Value};

#[tokio::test]
async fn help_explains_the_flags() {
    testing::assert_help_lists(
        env!("CARGO_BIN_EXE_fake-kube"),
        &[
            "--addr",
            "--kubeconfig",
            "--client-token",
            "--history-limit",
            "--bookmark-interval-ms",
            "--api-audiences",
        ],
    )
    .await;
}

#[tokio::test]
async fn binary_serves_the_kubeconfig_it_writes_and_obeys_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    let mut args = vec![
        "--addr".into(),
        "127.0.0.1:0".into(),
        "--kubeconfig".into(),
        path.clone().into_os_string(),
    ];
    args.extend(["--client-token", "s3cret", "--log-format", "plain"].map(Into::into));
    let (child, v) = testing::start(env!("CARGO_BIN_EXE_fake-kube"), args).await;
    let url = v["url"].as_str().unwrap().to_owned();
    assert_eq!(v["kubeconfig"], json!(path.display().to_string()));
    let admin = |p: &str| format!("{url}/_admin/{p}");
    let http = reqwest::Client::new();

    // Scenario through /_admin: a pod, its token, its death.
    let r = http
        .post(admin("pods"))
        .json(&json!({"namespace": "agents", "name": "agent-1", "labels": {"app": "agent"}, "service_account": "agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pod: Value = r.json().await.unwrap();
    let r = http
        .post(admin("tokens"))
        .json(&json!({"token": "tok", "namespace": "agents", "service_account": "agent",
                      "pod_name": "agent-1", "pod_uid": pod["metadata"]["uid"], "audiences": ["agentmon"],
                      "expires_in_seconds": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for step in [
        json!({"step": "running"}),
        json!({"step": "terminated", "exit_code": 137, "reason": "OOMKilled"}),
    ] {
        let r = http
            .post(admin("pods/agents/agent-1/lifecycle"))
            .json(&step)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{step}");
    }

    let client = Client::try_from(config_from(&path).await).unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), "agents");
    let listed = api
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let status = listed.items[0].status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));

    // A fault through /_admin reaches the kube client.
    let r = http
        .post(admin("faults"))
        .json(&json!({"route": "pods_list", "kind": "status", "status": 500, "count": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 500),
        other => panic!("expected the injected 500, got {other:?}"),
    }
    let r = http
        .delete(admin("pods/agents/agent-1?grace_seconds=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(api.get_opt("agent-1").await.unwrap().is_none());
    let stats: Value = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["faults_served"]["status"], 1);
    for p in [
        "watches/drop",
        "watches/expire",
        "watches/bookmark",
        "watches/pause",
        "watches/resume",
        "compact",
    ] {
        let r = http.post(admin(p)).send().await.unwrap();
        assert!(r.status().is_success(), "{p}: {}", r.status());
    }

    testing::sigterm_exits_0(child).await;
}
