//! Pod identity (issue 20): a watcher proves which pod it is with its
//! projected ServiceAccount token (`BRIDGE_TOKEN_FILE`), bot-bridge checks it
//! with a TokenReview against fake-kube and lets that pod act on its own run
//! only. Real bot-bridge and watcher binaries, fake Discord with its rate
//! limits on, fake-kube as the cluster.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use e2e::{eventually, metric_value, transcript, BridgeProc, FakeDiscordProc, Proc};
use fake_kube::{FakeKube, Fault, FaultKind, NewPod, Route};
use serde_json::{json, Value};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(60);
const API_TOKEN: &str = "api-token-SECRET-77c2";
const BOT_TOKEN: &str = "bot-token-SECRET-41d0";
const NS: &str = "agents";
const AUDIENCE: &str = "agentmon";
const LONG: Option<Duration> = Some(Duration::from_secs(3600));

/// A JWT-shaped test token (fake-kube does not verify JWTs; bot-bridge reads
/// `exp` to bound its cache). `tag` keeps tokens distinct.
fn jwt(tag: &str, exp_in: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"exp": now + exp_in.as_secs(), "jti": tag});
    format!(
        "{}.{}.sig-SECRET-{tag}",
        e.encode(br#"{"alg":"RS256"}"#),
        e.encode(claims.to_string())
    )
}

/// bot-bridge with pod identity (TokenReviews on fake-kube) and the
/// reconciler's watch, its store in `dir`.
async fn start_bridge(discord: &FakeDiscordProc, dir: &Path, kubeconfig: &Path) -> BridgeProc {
    let env = vec![
        ("API_ADDR", "127.0.0.1:0".to_string()),
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", API_TOKEN.to_string()),
        ("DISCORD_BOT_TOKEN", BOT_TOKEN.to_string()),
        ("DISCORD_API_BASE", discord.api_base.clone()),
        ("GUILD_ID", "1".to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("bridge.db").display()),
        ),
        ("RETENTION", "1h".to_string()),
        ("RUST_LOG", "info".to_string()),
        ("INPUT_URL_ALLOW", "127.0.0.1/32".to_string()),
        ("KUBE_CONFIG", kubeconfig.display().to_string()),
        ("RECONCILE_NAMESPACES", NS.to_string()),
        ("RUN_SILENCE_TIMEOUT", "0".to_string()),
        ("TOKEN_REVIEW_AUDIENCE", AUDIENCE.to_string()),
    ];
    BridgeProc::start(&env).await
}

/// `method path` on `bridge` with `token` as the bearer (none when `None`):
/// the status.
async fn call(
    bridge: &BridgeProc,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> u16 {
    let url = format!("http://{}{path}", bridge.api);
    let http = reqwest::Client::new();
    let mut req = match method {
        "GET" => http.get(url),
        _ => http.post(url).json(&body),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status().as_u16()
}

/// The value of `series` on `bridge`'s `/metrics` (which must have it).
async fn metric(bridge: &BridgeProc, series: &str) -> f64 {
    let text = bridge.metrics().await;
    metric_value(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

fn auth_series(method: &str, outcome: &str) -> String {
    format!("bridge_auth_total{{method=\"{method}\",outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn a_pod_token_acts_on_its_own_run_only() {
    scenario(&[]).await;
}

#[tokio::test]
async fn a_pod_token_acts_on_its_own_run_only_without_discord_rate_limits() {
    scenario(&["--no-rate-limits"]).await;
}

async fn scenario(discord_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeKube::start().await.unwrap();
    let kubeconfig = fake.kubeconfig(dir.path().join("kubeconfig")).unwrap();
    let discord = FakeDiscordProc::start(discord_args).await;
    let bridge = start_bridge(&discord, dir.path(), &kubeconfig).await;
    // Every series exists from the first scrape.
    for m in ["api_token", "run_token", "pod_token"] {
        for o in ["ok", "unauthenticated", "forbidden", "unavailable"] {
            assert_eq!(metric(&bridge, &auth_series(m, o)).await, 0.0, "{m} {o}");
        }
    }

    let pod_a = fake
        .create_pod(NewPod::new(NS, "agent-a").label("agentmon.io/watcher", "true"))
        .unwrap();
    let pod_b = fake
        .create_pod(NewPod::new(NS, "agent-b").label("agentmon.io/watcher", "true"))
        .unwrap();
    fake.run_pod(NS, "agent-a").unwrap();
    fake.run_pod(NS, "agent-b").unwrap();
    // Pod A's first token lives a few seconds; the kubelet "rotates" it.
    let token_a1 = jwt("a1", Duration::from_secs(4));
    let token_a2 = jwt("a2", Duration::from_secs(3600));
    let token_b = jwt("b", Duration::from_secs(3600));
    fake.add_pod_token(&token_a1, &pod_a, &[AUDIENCE], Some(Duration::from_secs(4)));
    fake.add_pod_token(&token_a2, &pod_a, &[AUDIENCE], LONG);
    fake.add_pod_token(&token_b, &pod_b, &[AUDIENCE], LONG);

    // A real watcher in pod A, its bearer from a token file.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token_a1).unwrap();
    let transcript_path = dir.path().join("a.jsonl");
    std::fs::write(
        &transcript_path,
        transcript::prompt("u-a", "s", "hello from a"),
    )
    .unwrap();
    let state = dir.path().join("state-a");
    std::fs::create_dir_all(&state).unwrap();
    let mut env = e2e::watcher_env(&transcript_path, &state);
    env.extend([
        ("BRIDGE_URL", format!("http://{}", bridge.api)),
        ("BRIDGE_TOKEN_FILE", token_file.display().to_string()),
        ("TASK_ID", "task-a".to_string()),
        ("ATTEMPT", "1".to_string()),
        ("SHORT_ID", "a".to_string()),
        ("POD_NAMESPACE", NS.to_string()),
        ("POD_NAME", "agent-a".to_string()),
        ("POD_UID", pod_a.metadata.uid.clone().unwrap()),
    ]);
    let mut watcher = Proc::start("watcher", &[], &env);
    let provisioned = watcher
        .wait_log("run provisioned by bot-bridge", DEADLINE)
        .await;
    let run_a = provisioned["run_id"].as_str().unwrap().to_owned();
    let channel_a = bridge.run(&run_a, API_TOKEN).await["channel_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("pod A's first message", DEADLINE, || async {
        let text = discord
            .payload_text(&format!("?channel_id={channel_a}"))
            .await;
        text.contains("hello from a").then_some(())
    })
    .await;

    // Pod B creates run B with its own token (a plain HTTP client).
    let created = reqwest::Client::new()
        .post(format!("http://{}/v1/runs", bridge.api))
        .bearer_auth(&token_b)
        .json(&json!({"task_id": "task-b", "attempt": 1, "short_id": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let run_b = created.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Rotation: the file now holds A's second token; the first expires.
    std::fs::write(&token_file, &token_a2).unwrap();
    eventually("pod A's first token expired", DEADLINE, || async {
        let s = call(
            &bridge,
            "GET",
            &format!("/v1/runs/{run_a}"),
            Some(&token_a1),
            json!({}),
        )
        .await;
        (s == 401).then_some(())
    })
    .await;

    // Pod A on run B, and on what only API_TOKEN may do: 403.
    let forbidden = [
        ("GET", format!("/v1/runs/{run_b}")),
        ("POST", format!("/v1/runs/{run_b}/complete")),
        ("POST", format!("/v1/runs/{run_b}/heartbeat")),
        ("GET", "/v1/runs".to_owned()),
    ];
    for (method, path) in &forbidden {
        let s = call(&bridge, method, path, Some(&token_a2), json!({})).await;
        assert_eq!(s, 403, "pod A: {method} {path}");
    }
    // Re-posting run B's key does not hand pod A its secrets.
    let s = call(
        &bridge,
        "POST",
        "/v1/runs",
        Some(&token_a2),
        json!({"task_id": "task-b", "attempt": 1, "short_id": "b"}),
    )
    .await;
    assert_eq!(s, 403, "pod A re-posting run B's key");
    // Pod A reads its own run.
    let s = call(
        &bridge,
        "GET",
        &format!("/v1/runs/{run_a}"),
        Some(&token_a2),
        json!({}),
    )
    .await;
    assert_eq!(s, 200);

    // No token, an expired token, another audience, an unknown token: 401.
    let expired = jwt("expired", Duration::from_secs(3600));
    fake.add_pod_token(&expired, &pod_a, &[AUDIENCE], LONG);
    fake.expire_token(&expired).unwrap();
    let other_audience = jwt("vault", Duration::from_secs(3600));
    fake.add_pod_token(&other_audience, &pod_a, &["vault"], LONG);
    let path_a = format!("/v1/runs/{run_a}");
    for (what, token) in [
        ("no token", None),
        ("expired", Some(expired.as_str())),
        ("other audience", Some(other_audience.as_str())),
        ("unknown", Some("not-a-token")),
    ] {
        assert_eq!(
            call(&bridge, "GET", &path_a, token, json!({})).await,
            401,
            "{what}"
        );
    }

    // The TokenReview API down: new tokens get 503 (never 500), cached ones
    // keep working.
    let fresh = jwt("fresh", Duration::from_secs(3600));
    fake.add_pod_token(&fresh, &pod_a, &[AUDIENCE], LONG);
    let kinds = [
        FaultKind::Status {
            status: 503,
            retry_after_seconds: Some(1),
        },
        FaultKind::Status {
            status: 500,
            retry_after_seconds: None,
        },
        FaultKind::Reset,
        FaultKind::Hang,
    ];
    for kind in kinds {
        let shown = format!("{kind:?}");
        fake.inject(Fault::always(Route::TokenReviews, kind));
        let t0 = Instant::now();
        let s = call(&bridge, "GET", &path_a, Some(&fresh), json!({})).await;
        let took = t0.elapsed();
        assert_eq!(s, 503, "{shown}");
        assert!(took < Duration::from_secs(8), "{shown}: took {took:?}");
        let cached = call(
            &bridge,
            "GET",
            &format!("/v1/runs/{run_b}"),
            Some(&token_b),
            json!({}),
        )
        .await;
        assert_eq!(cached, 200, "{shown}: a cached review still works");
        fake.clear_faults();
        eprintln!("TokenReview {shown}: 503 in {took:?}");
    }
    assert_eq!(
        call(&bridge, "GET", &path_a, Some(&fresh), json!({})).await,
        200,
        "the review works again"
    );

    // Pod A's watcher completes run A with the rotated token (the first one
    // is refused by now, so only a re-read file can do this).
    watcher.sigterm();
    assert!(
        watcher.wait_exit(Duration::from_secs(10)).await.is_some(),
        "the watcher exits"
    );
    let view = eventually("run A completed", DEADLINE, || async {
        let v = bridge.run(&run_a, API_TOKEN).await;
        (v["status"] != "active").then_some(v)
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(bridge.run(&run_b, API_TOKEN).await["status"], "active");

    for (m, o, min) in [
        ("pod_token", "ok", 3.0),
        ("pod_token", "forbidden", 5.0),
        ("pod_token", "unauthenticated", 5.0),
        ("pod_token", "unavailable", 4.0),
    ] {
        let v = metric(&bridge, &auth_series(m, o)).await;
        assert!(v >= min, "{m} {o}: {v}");
    }
    // No token in bot-bridge's or the watcher's output.
    let out = format!("{}{}", bridge.proc.output(), watcher.output());
    for t in [&token_a1, &token_a2, &token_b, &fresh, &expired] {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!out.contains(sig), "a token leaked into the logs");
    }
}
