//! bot-bridge's health on a cluster's terms, over the real binary and the
//! fake Discord: readiness follows the store both ways (never latched), and
//! nothing at start-up waits on Discord.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use e2e::{eventually, get_text, metric_value, FakeDiscordProc, Proc};
use serde_json::{json, Value};
use tokio::time::Instant;

const API_TOKEN: &str = "api-token-SECRET-77aa";
const BOT_TOKEN: &str = "bot-token-SECRET-91bc";
const APP_ID: &str = "4242";
const COMMANDS_ROUTE: &str = "PUT /applications/{application_id}/guilds/{guild_id}/commands";

fn bridge_env(fake: &FakeDiscordProc, db: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", API_TOKEN.to_string()),
        ("DISCORD_BOT_TOKEN", BOT_TOKEN.to_string()),
        ("DISCORD_API_BASE", fake.api_base.clone()),
        ("DISCORD_APPLICATION_ID", APP_ID.to_string()),
        ("GUILD_ID", "1".to_string()),
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
    ]
}

/// The API and ops addresses bot-bridge logged when its ports opened.
async fn addresses(p: &Proc, timeout: Duration) -> (String, String) {
    let started = p.wait_log("started", timeout).await;
    (
        started["api_addr"].as_str().unwrap().to_owned(),
        started["ops_addr"].as_str().unwrap().to_owned(),
    )
}

async fn create_run(api: &str, short: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{api}/v1/runs"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"task_id": "t-1", "attempt": 1, "short_id": short}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn healthz(ops: &str) -> Value {
    serde_json::from_str(&get_text(&format!("http://{ops}/healthz")).await.1).unwrap()
}

#[tokio::test]
async fn readiness_recovers_on_its_own_after_the_store_was_locked() {
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bridge.db");
    let bridge = Proc::start("bot-bridge", &[], &bridge_env(&fake, &db));
    let (api, ops) = addresses(&bridge, Duration::from_secs(30)).await;
    let readyz = || async { get_text(&format!("http://{ops}/readyz")).await };
    eventually("ready at start", Duration::from_secs(10), || async {
        (readyz().await.0 == 200).then_some(())
    })
    .await;

    // Another process takes the write lock for 10 s.
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();

    let (status, body) = create_run(&api, "locked").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let (code, ready) = readyz().await;
    assert_eq!(code, 503, "not ready while the store is locked: {ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["checks"]["store"]["status"], "failed", "{ready}");

    // Still locked: readiness stays down (probes only, no request).
    while locked_at.elapsed() < Duration::from_secs(10) {
        let (code, body) = readyz().await;
        assert_eq!(code, 503, "ready while the store is still locked: {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    let released = Instant::now();

    // Ready again within 5 s of the release, with no request in between.
    eventually(
        "/readyz 200 after the lock was released",
        Duration::from_secs(5),
        || async { (readyz().await.0 == 200).then_some(()) },
    )
    .await;
    let recovered = released.elapsed();
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    eprintln!("ready again {recovered:?} after the lock was released");

    let (status, body) = create_run(&api, "after").await;
    assert_eq!(status, 201, "{body}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    let store_errors = metric_value(&metrics, "bridge_errors_total{kind=\"store\"}").unwrap();
    assert!(store_errors >= 1.0, "{metrics}");
}

/// Discord accepts every connection and answers nothing (a `hang` on every
/// route) from before bot-bridge starts: both ports answer within 1 s, and
/// stay up while Discord hangs; the commands are registered once Discord
/// answers again.
async fn ports_open_while_discord_hangs(rate_limits: bool) {
    // Longer than it takes to start and probe, and than the old 4 s trial.
    const HANG: Duration = Duration::from_secs(6);
    let args: &[&str] = if rate_limits {
        &[]
    } else {
        &["--no-rate-limits"]
    };
    let fake = FakeDiscordProc::start(args).await;
    fake.inject(json!({"kind": "hang", "route": "*", "count": 10_000}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let spawned = Instant::now();
    let bridge = Proc::start(
        "bot-bridge",
        &[],
        &bridge_env(&fake, &dir.path().join("b.db")),
    );
    let (api, ops) = addresses(&bridge, Duration::from_secs(5)).await;
    let (live, _) = get_text(&format!("http://{ops}/livez")).await;
    let listed = reqwest::Client::new()
        .get(format!("http://{api}/v1/runs"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    let answered = spawned.elapsed();
    assert_eq!((live, listed.as_u16()), (200, 200));
    assert!(
        answered < Duration::from_secs(1),
        "ports answered {answered:?} after start (rate limits {rate_limits})"
    );
    let health = healthz(&ops).await;
    assert_eq!(
        health["checks"]["commands"]["status"], "degraded",
        "{health}"
    );
    let (ready, body) = get_text(&format!("http://{ops}/readyz")).await;
    assert_eq!(
        ready, 200,
        "a pending registration must not gate readiness: {body}"
    );
    // Every labelled series exists before the first request or Discord answer.
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    for series in [
        "http_server_requests_total{method=\"POST\",route=\"/v1/runs\",service=\"bot-bridge\",status=\"500\"}",
        "bridge_discord_requests_total{route=\"POST /guilds/{guild_id}/channels\",status=\"200\"}",
        "bridge_discord_requests_total{route=\"PUT /applications/{application_id}/guilds/{guild_id}/commands\",status=\"0\"}",
    ] {
        assert_eq!(metric_value(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    // While Discord hangs, the process stays live and nothing is registered.
    let mut probes = 0;
    while spawned.elapsed() < HANG {
        let (live, body) = get_text(&format!("http://{ops}/livez")).await;
        assert_eq!(live, 200, "/livez while Discord hangs: {body}");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        fake.admin_list("commands").await.is_empty(),
        "nothing can be registered while Discord hangs"
    );
    let held = fake.stats().await["faults_served"]["hang"].clone();
    assert!(
        held.as_u64().unwrap_or(0) >= 1,
        "Discord held a request: {held}"
    );

    // Discord answers again (the held requests are answered too).
    fake.clear_faults().await;
    let cleared = Instant::now();
    let commands = eventually("commands registered", Duration::from_secs(20), || async {
        let list = fake.admin_list("commands").await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    let registered = cleared.elapsed();
    let names: Vec<&str> = commands[0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"input") && names.contains(&"status"),
        "{commands:?}"
    );
    eventually("commands component ok", Duration::from_secs(5), || async {
        (healthz(&ops).await["checks"]["commands"]["status"] == "ok").then_some(())
    })
    .await;
    eprintln!(
        "rate limits {rate_limits}: Discord hanging on every route from the start: \
         ports answered {answered:?} after start, /livez 200 on {probes} probes over {HANG:?}; \
         commands registered {registered:?} after Discord answered again"
    );
}

#[tokio::test]
async fn ports_answer_at_once_while_discord_hangs_with_rate_limits() {
    ports_open_while_discord_hangs(true).await;
}

#[tokio::test]
async fn ports_answer_at_once_while_discord_hangs_without_rate_limits() {
    ports_open_while_discord_hangs(false).await;
}

#[tokio::test]
async fn a_failed_registration_is_counted_and_retried_until_it_succeeds() {
    let fake = FakeDiscordProc::start(&[]).await;
    // One whole registration fails (the REST client's request and its 3 retries).
    fake.inject(json!({"kind": "status", "status": 503, "route": COMMANDS_ROUTE, "count": 4}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Proc::start(
        "bot-bridge",
        &[],
        &bridge_env(&fake, &dir.path().join("b.db")),
    );
    let (_, ops) = addresses(&bridge, Duration::from_secs(30)).await;
    eventually("commands registered", Duration::from_secs(30), || async {
        (!fake.admin_list("commands").await.is_empty()).then_some(())
    })
    .await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    assert_eq!(
        metric_value(&metrics, "bridge_errors_total{kind=\"discord\"}"),
        Some(1.0),
        "{metrics}"
    );
    let failed = metric_value(
        &metrics,
        "bridge_discord_requests_total{route=\"PUT /applications/{application_id}/guilds/{guild_id}/commands\",status=\"503\"}",
    );
    assert_eq!(failed, Some(4.0), "{metrics}");
    eventually("commands component ok", Duration::from_secs(5), || async {
        (healthz(&ops).await["checks"]["commands"]["status"] == "ok").then_some(())
    })
    .await;
    assert!(!bridge.output().contains(BOT_TOKEN));
}
