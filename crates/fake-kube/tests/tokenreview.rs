//! TokenReviews through the real kube client: what bot-bridge will do to
//! learn which pod a watcher's projected token belongs to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{cluster, config_from};
use fake_kube::{extra, Fault, FaultKind, NewPod, Route};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

const AUDIENCE: &str = "agentmon";

async fn review(
    client: &Client,
    token: &str,
    audiences: &[&str],
) -> Result<TokenReviewStatus, kube::Error> {
    let api: Api<TokenReview> = Api::all(client.clone());
    let req = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..TokenReview::default()
    };
    let answer = api.create(&PostParams::default(), &req).await?;
    Ok(answer.status.expect("a review has a status"))
}

#[tokio::test]
async fn token_review_names_the_bound_pod_and_refuses_the_rest() {
    let c = cluster().await;
    let pod = c
        .fake
        .create_pod(NewPod::new("agents", "agent-1").service_account("agent"))
        .unwrap();
    c.fake
        .add_pod_token("tok-a", &pod, &[AUDIENCE], Some(Duration::from_secs(600)));
    c.fake.add_pod_token("tok-vault", &pod, &["vault"], None);

    let ok = review(&c.client, "tok-a", &[AUDIENCE]).await.unwrap();
    assert_eq!(ok.authenticated, Some(true), "{ok:?}");
    assert_eq!(ok.audiences, Some(vec![AUDIENCE.to_owned()]));
    let user = ok.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:agents:agent")
    );
    assert!(user
        .groups
        .unwrap()
        .contains(&"system:serviceaccounts:agents".to_owned()));
    let x = user.extra.unwrap();
    assert_eq!(x[extra::POD_NAME], vec!["agent-1"]);
    assert_eq!(x[extra::POD_UID], vec![pod.metadata.uid.clone().unwrap()]);
    assert_eq!(x[extra::NODE_NAME], vec!["node-1"]);
    assert!(x[extra::CREDENTIAL_ID][0].starts_with("JTI="));

    // Another audience's token, an unknown token: not authenticated (a
    // 201 answer with authenticated=false, not an HTTP error).
    let wrong = review(&c.client, "tok-vault", &[AUDIENCE]).await.unwrap();
    assert_eq!(wrong.authenticated, Some(false));
    assert!(wrong.error.unwrap().contains("audiences"));
    assert_eq!(
        review(&c.client, "forged", &[AUDIENCE])
            .await
            .unwrap()
            .authenticated,
        Some(false)
    );

    // Expired.
    c.fake.expire_token("tok-a").unwrap();
    let expired = review(&c.client, "tok-a", &[AUDIENCE]).await.unwrap();
    assert_eq!(expired.authenticated, Some(false));
    assert!(expired.error.unwrap().contains("expired"));

    // A token whose pod is gone stops working, as on a real apiserver.
    c.fake.add_pod_token("tok-b", &pod, &[AUDIENCE], None);
    c.fake.remove_pod("agents", "agent-1").unwrap();
    let gone = review(&c.client, "tok-b", &[AUDIENCE]).await.unwrap();
    assert_eq!(gone.authenticated, Some(false));

    // An empty token is a 400 from the apiserver.
    match review(&c.client, "", &[AUDIENCE]).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }
    assert_eq!(c.fake.stats().token_reviews, 5);
}

#[tokio::test]
async fn token_review_api_down_is_an_error_not_an_answer() {
    let c = cluster().await;
    let pod = c.fake.create_pod(NewPod::new("agents", "agent-1")).unwrap();
    c.fake.add_pod_token("tok", &pod, &[AUDIENCE], None);

    // kube retries 503 on its own (up to 15 times, with backoff), so a
    // client that must answer quickly turns that off; the API then fails
    // fast with the 503 Status.
    let mut config = config_from(&c.dir.path().join("kubeconfig")).await;
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_millis(500));
    let fast = Client::try_from(config).unwrap();

    c.fake.inject(Fault::always(
        Route::TokenReviews,
        FaultKind::Status {
            status: 503,
            retry_after_seconds: Some(1),
        },
    ));
    match review(&fast, "tok", &[AUDIENCE]).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (503, "ServiceUnavailable"))
        }
        other => panic!("expected 503, got {other:?}"),
    }
    c.fake.clear_faults();

    // Unreachable mid-request: the connection closes without an answer.
    c.fake
        .inject(Fault::times(Route::TokenReviews, FaultKind::Reset, 1));
    let err = review(&fast, "tok", &[AUDIENCE]).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a transport error: {err:?}"
    );

    // Hanging: the client's own timeout ends it.
    c.fake
        .inject(Fault::always(Route::TokenReviews, FaultKind::Hang));
    let err = review(&fast, "tok", &[AUDIENCE]).await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "a timeout: {err:?}");
    c.fake.clear_faults();

    // A request held by a hang is answered once the faults are cleared.
    c.fake
        .inject(Fault::always(Route::TokenReviews, FaultKind::Hang));
    let held = tokio::spawn({
        let client = c.client.clone();
        async move { review(&client, "tok", &[AUDIENCE]).await }
    });
    c.fake
        .wait_for_stats(common::DEADLINE, |s| {
            s.faults_served.get("hang") == Some(&2)
        })
        .await;
    assert!(!held.is_finished());
    c.fake.clear_faults();
    let released = tokio::time::timeout(common::DEADLINE, held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.unwrap().authenticated, Some(true));

    // And then it works again.
    let ok = review(&fast, "tok", &[AUDIENCE]).await.unwrap();
    assert_eq!(ok.authenticated, Some(true));
    let served = c.fake.stats().faults_served;
    assert_eq!(
        (served["status"], served["reset"], served["hang"]),
        (1, 1, 2)
    );

    // The default client rides out a short outage by retrying.
    c.fake.inject(Fault::times(
        Route::TokenReviews,
        FaultKind::Status {
            status: 503,
            retry_after_seconds: None,
        },
        2,
    ));
    assert_eq!(
        review(&c.client, "tok", &[AUDIENCE])
            .await
            .unwrap()
            .authenticated,
        Some(true)
    );

    // A stopped apiserver: connection refused.
    let dir = c.dir;
    c.fake.stop().await;
    let refused = Client::try_from(config_from(&dir.path().join("kubeconfig")).await).unwrap();
    assert!(review(&refused, "tok", &[AUDIENCE]).await.is_err());
}

#[tokio::test]
async fn the_client_must_present_the_kubeconfig_token() {
    let c = cluster().await;
    let mut config = config_from(&c.dir.path().join("kubeconfig")).await;
    config.auth_info.token = Some("wrong".to_owned().into());
    let wrong = Client::try_from(config).unwrap();
    match review(&wrong, "tok", &[AUDIENCE]).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected 401, got {other:?}"),
    }
    let plain = reqwest::get(format!("{}/api/v1/pods", c.fake.url()))
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);
    let body: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["code"], 401);
    assert_eq!(c.fake.stats().unauthorized, 2);
    // The admin API and /version need no token.
    let v: serde_json::Value = reqwest::get(format!("{}/version", c.fake.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["minor"], "33");
    assert_eq!(c.client.apiserver_version().await.unwrap().major, "1");
}
