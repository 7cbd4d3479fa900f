//! Rate limits and outages, over the real binaries and fake-discord with
//! Discord's limits on: the limiter never wedges (a long run of failures
//! without rate-limit headers, then recovery), and a backlog drains at the
//! limits' rate without a single 429 however Discord counts its per-channel
//! window (sliding, or fixed windows of any phase).

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use e2e::{
    append_chunked, backlog_run, count, eventually, get_text, metric_value, transcript,
    FakeDiscordProc, Limits, Proc, WebhookWatcher,
};
use serde_json::{json, Value};
use tokio::time::Instant;

/// Delivery must resume this soon after Discord does.
const RECOVERY: Duration = Duration::from_secs(5);

/// Six 502s without rate-limit headers, 503s for 60 s, then connection
/// resets: once Discord answers again, every record arrives within 5 s, once
/// each and in order. Before issue 15's fix, with the fake's limits on, the
/// 502s drained the webhook's bucket for good and nothing was sent again.
async fn outage_then_recovery(fake_args: &[&str]) {
    let fake = FakeDiscordProc::start(fake_args).await;
    let WebhookWatcher {
        dir: _dir,
        file,
        proc: _w,
        ops,
    } = WebhookWatcher::start(&fake, &[]).await;
    // A first delivery, so the watcher knows the webhook's bucket.
    append_chunked(&file, transcript::prompts("out", 0..5).as_bytes(), 512, 1);
    fake.wait_markers("", "out", 0..5, Duration::from_secs(30))
        .await;

    fake.inject(json!([
        {"kind": "status", "status": 502, "count": 6},
        {"kind": "status", "status": 503, "for_ms": 60_000},
        {"kind": "reset", "count": 4},
    ]))
    .await;
    // Records keep coming during the outage.
    for chunk in 0..6 {
        append_chunked(
            &file,
            transcript::prompts("out", 5 + chunk * 5..10 + chunk * 5).as_bytes(),
            256,
            chunk as u64,
        );
        eventually("the outage progresses", Duration::from_secs(60), || async {
            let served = fake.stats().await["faults_served"]["status"]
                .as_u64()
                .unwrap_or(0);
            (served > chunk as u64 * 2).then_some(())
        })
        .await;
    }
    eventually("the outage ends", Duration::from_secs(150), || async {
        (fake.faults_pending().await == 0).then_some(())
    })
    .await;
    let text = fake
        .wait_markers("", "out", 0..35, Duration::from_secs(60))
        .await;

    let stats = fake.stats().await;
    let recovered = stats["last_fault_at_mono_ms"].as_u64().unwrap();
    let messages = fake.messages().await;
    let last = messages
        .iter()
        .map(|m| m["received_at_mono_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        last <= recovered + u64::try_from(RECOVERY.as_millis()).unwrap(),
        "the last record arrived {} ms after Discord recovered: {stats}",
        last.saturating_sub(recovered)
    );
    eprintln!(
        "every record delivered {} ms after the outage ended",
        last.saturating_sub(recovered)
    );
    let mut at = 0;
    for i in 0..35 {
        let marker = format!("out-{i:04}");
        assert_eq!(count(&text, &marker), 1, "{marker} once");
        let pos = text.find(&marker).unwrap();
        assert!(pos >= at, "{marker} out of order");
        at = pos;
    }
    assert_eq!(stats["faults_served"]["reset"], 4, "{stats}");
    assert_eq!(stats["rate_limited_total"], 0, "no 429 either: {stats}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    assert_eq!(
        metric_value(&metrics, "watcher_dlq_messages_total"),
        Some(0.0),
        "nothing dead-lettered"
    );
}

#[tokio::test]
async fn a_long_outage_without_rate_limit_headers_never_wedges_delivery_limits_on() {
    outage_then_recovery(&["--clock-tolerance-ms", "0"]).await;
}

#[tokio::test]
async fn a_long_outage_without_rate_limit_headers_never_wedges_delivery_limits_off() {
    outage_then_recovery(&["--no-rate-limits"]).await;
}

const API_TOKEN: &str = "api-token-SECRET-77aa";

async fn create_run(api: &str, short_id: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{api}/v1/runs"))
        .bearer_auth(API_TOKEN)
        .timeout(Duration::from_secs(45))
        .json(&json!({"task_id": "task-rl", "attempt": 1, "short_id": short_id}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// bot-bridge's REST client after Discord's REST API failed without
/// rate-limit headers, on issue 15's script (six 502s, then 503s on every
/// route for 60 s, then connection resets): the first `POST /v1/runs` after
/// Discord recovers succeeds within 5 s. Before issue 15's fix every call
/// then timed out after 30 s: the failures had drained the route's bucket.
async fn bot_bridge_provisioning_recovers(fake_args: &[&str]) {
    const OUTAGE: Duration = Duration::from_secs(60);
    let fake = FakeDiscordProc::start(fake_args).await;
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", API_TOKEN.to_string()),
        ("DISCORD_BOT_TOKEN", "bot-token-SECRET-77bb".to_string()),
        ("DISCORD_API_BASE", fake.api_base.clone()),
        ("GUILD_ID", "1".to_string()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        ),
    ];
    let bridge = Proc::start("bot-bridge", &[], &env);
    let started = bridge.wait_log("started", Duration::from_secs(30)).await;
    let api = started["api_addr"].as_str().unwrap().to_owned();
    // Known buckets first: what the failures used to drain.
    let (status, body) = create_run(&api, "ok0").await;
    assert_eq!(status, 201, "{body}");

    let outage = Instant::now();
    fake.inject(json!([
        {"kind": "status", "status": 502, "count": 6, "route": "*"},
        {"kind": "status", "status": 503, "for_ms": OUTAGE.as_millis(), "route": "*"},
        {"kind": "reset", "count": 12, "route": "*"},
    ]))
    .await;
    // Runs keep being created through the outage, as watchers starting do.
    let mut i = 0;
    while fake.faults_pending().await > 0 {
        i += 1;
        assert!(
            outage.elapsed() < OUTAGE * 3,
            "the faults were not used up after {:?}",
            outage.elapsed()
        );
        let (status, body) = create_run(&api, &format!("f{i}")).await;
        assert!(status >= 500 || status == 201, "{status}: {body}");
    }
    let stats = fake.stats().await;
    let lasted = outage.elapsed();
    assert!(lasted >= OUTAGE, "the 503s lasted {OUTAGE:?}: {lasted:?}");
    assert_eq!(stats["faults_served"]["reset"], 12, "{stats}");
    // Discord is back.
    let recovered = Instant::now();
    let (status, body) = create_run(&api, "after").await;
    let took = recovered.elapsed();
    assert_eq!(status, 201, "{body}");
    eprintln!(
        "{fake_args:?}: POST /v1/runs after recovery took {took:?} \
         ({i} calls during a {lasted:?} outage, {} faults served)",
        stats["faults_served"]
    );
    assert!(
        took <= RECOVERY,
        "POST /v1/runs took {took:?} after recovery"
    );
    let (status, body) = create_run(&api, "after2").await;
    assert_eq!(status, 201, "{body}");
    assert!(!bridge.output().contains("SECRET"), "a token leaked");
}

#[tokio::test]
async fn bot_bridge_provisions_again_within_seconds_of_discord_recovering_limits_on() {
    bot_bridge_provisioning_recovers(&["--clock-tolerance-ms", "0"]).await;
}

#[tokio::test]
async fn bot_bridge_provisions_again_within_seconds_of_discord_recovering_limits_off() {
    bot_bridge_provisioning_recovers(&["--no-rate-limits"]).await;
}

/// Issue 16: a 600-event backlog against the per-channel limit counted as a
/// sliding window and as fixed windows of a random phase: no 429, at least
/// 0.95 of the limits' rate. Scaled ten times down (30 per 6 s, 5 per 200 ms)
/// so a run takes seconds; `cargo bench -p e2e --bench latency` measures 20
/// runs of each.
#[tokio::test]
async fn a_backlog_drains_at_the_channel_rate_without_a_429_in_either_window() {
    let limits = Limits::DISCORD.scaled(10);
    for kind in ["sliding", "fixed", "sliding", "fixed"] {
        let run = backlog_run(limits, kind, 600).await;
        eprintln!("{}", serde_json::to_string(&run).unwrap());
        assert_eq!(run.rate_limited, 0, "no 429: {run:?}");
        assert!(run.fraction_of_max >= 0.95, "too slow: {run:?}");
        assert!(run.embeds >= 601, "every event and the header: {run:?}");
    }
}
