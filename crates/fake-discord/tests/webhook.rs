//! Execute Webhook against the fake started in-process on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fake_discord::{FakeConfig, FakeDiscord, Fault, FaultKind, StormScope};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn msg(text: &str) -> Value {
    json!({"content": text, "allowed_mentions": {"parse": []}})
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    client().post(url).json(body).send().await.unwrap()
}

#[tokio::test]
async fn webhook_headers_count_down_and_the_sixth_request_is_429() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let url = format!("{}?wait=true", hook.url);
    let mut bucket = None;
    for left in (0..5).rev() {
        let r = post(&url, &msg("hi")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "x-ratelimit-limit"), "5");
        assert_eq!(header(&r, "x-ratelimit-remaining"), left.to_string());
        let reset_after: f64 = header(&r, "x-ratelimit-reset-after").parse().unwrap();
        assert!(reset_after > 0.0 && reset_after <= 2.0, "{reset_after}");
        assert_eq!(
            header(&r, "x-ratelimit-reset-after")
                .split('.')
                .nth(1)
                .map(str::len),
            Some(3)
        );
        let reset: f64 = header(&r, "x-ratelimit-reset").parse().unwrap();
        assert!(reset > 1.7e9);
        let b = header(&r, "x-ratelimit-bucket").to_owned();
        assert_eq!(bucket.get_or_insert(b.clone()), &b, "bucket is stable");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["channel_id"], json!(hook.channel_id));
        assert_eq!(body["webhook_id"], json!(hook.id));
        assert!(body["id"].as_str().unwrap().parse::<u64>().is_ok());
    }
    let r = post(&url, &msg("one too many")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-scope"), "user");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0");
    let retry_header: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry_header));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "You are being rate limited.");
    assert_eq!(body["global"], false);
    let retry = body["retry_after"].as_f64().unwrap();
    assert!(retry > 0.0 && retry <= 2.0, "{retry}");

    // Refused requests are not recorded; waiting as told is enough.
    assert_eq!(fake.messages().len(), 5);
    tokio::time::sleep(Duration::from_secs_f64(retry)).await;
    let r = post(&url, &msg("after the wait")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");

    let stats = fake.stats_json();
    assert_eq!(stats["accepted"], 6);
    assert_eq!(stats["rate_limited"]["user"], 1);
    assert_eq!(stats["requests"], 7);
    assert_eq!(stats["missing_allowed_mentions"], 0);
}

#[tokio::test]
async fn without_wait_the_answer_is_204_with_headers() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let r = post(&hook.url, &json!({"content": "x"})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");
    // Also under /api/v9 and /api.
    for prefix in ["/api/v9", "/api"] {
        let url = format!(
            "{}{prefix}/webhooks/{}/{}",
            fake.base_url(),
            hook.id,
            hook.token
        );
        assert_eq!(post(&url, &msg("v")).await.status(), StatusCode::NO_CONTENT);
    }
    let m = fake.messages();
    assert_eq!(m.len(), 3);
    assert!(!m[0].wait);
    assert!(m[0].received_at_mono_ms <= m[2].received_at_mono_ms);
    assert_eq!(fake.stats().missing_allowed_mentions, 1);
}

#[tokio::test]
async fn the_31st_message_in_a_minute_is_refused_with_shared_scope() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let first = fake.create_webhook("busy").unwrap();
    // Seven webhooks in one channel: the per-webhook limit (5 / 2 s) is not
    // what stops message 31, the unadvertised channel limit is.
    let mut hooks = vec![first.clone()];
    for _ in 0..6 {
        hooks.push(fake.create_webhook(&first.channel_id).unwrap());
    }
    for i in 0..30 {
        let h = &hooks[i / 5];
        let r = post(&format!("{}?wait=true", h.url), &msg(&format!("m{i}"))).await;
        assert_eq!(r.status(), StatusCode::OK, "message {i}");
    }
    let r = post(&format!("{}?wait=true", hooks[6].url), &msg("m30")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-scope"), "shared");
    // The webhook's own bucket still had room: the limit was not advertised.
    assert_eq!(header(&r, "x-ratelimit-remaining"), "4");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["global"], false);
    assert!(body["retry_after"].as_f64().unwrap() > 50.0);
    let stats = fake.stats_json();
    assert_eq!(stats["rate_limited"]["shared"], 1);
    assert_eq!(
        stats["max_channel_messages_per_minute"][&first.channel_id],
        30
    );
    assert_eq!(fake.messages().len(), 30);
    // Another channel is not affected.
    let other = fake.create_webhook("quiet").unwrap();
    assert_eq!(
        post(&other.url, &msg("ok")).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn the_global_limit_is_50_per_second_with_the_global_flag() {
    let fake = FakeDiscord::start(FakeConfig {
        global_per_second: 3,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    for _ in 0..3 {
        assert!(post(&hook.url, &msg("x")).await.status().is_success());
    }
    let r = post(&hook.url, &msg("x")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "x-ratelimit-global"), "true");
    assert_eq!(header(&r, "x-ratelimit-scope"), "global");
    assert!(r.headers().get("x-ratelimit-bucket").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["global"], true);
    assert_eq!(fake.stats().rate_limited["global"], 1);
}

#[tokio::test]
async fn invalid_payloads_are_400_invalid_form_body() {
    let fake = FakeDiscord::start(FakeConfig::without_rate_limits())
        .await
        .unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let url = format!("{}?wait=true", hook.url);
    let cases = [
        (json!({"content": "x".repeat(2001)}), "content"),
        (json!({"embeds": [{"title": "t".repeat(257)}]}), "embeds"),
        (
            json!({"embeds": [{"description": "d".repeat(4097)}]}),
            "embeds",
        ),
        (json!({"embeds": vec![json!({"title": "t"}); 11]}), "embeds"),
        (
            json!({"embeds": [{"fields": vec![json!({"name": "n", "value": "v"}); 26]}]}),
            "embeds",
        ),
        (json!({"embeds": [{"color": 0x100_0000}]}), "embeds"),
        (
            json!({"embeds": [{"title": "x", "timestamp": "now"}]}),
            "embeds",
        ),
        (
            json!({"embeds": [{"description": "d".repeat(4000)}, {"description": "d".repeat(2001)}]}),
            "embeds",
        ),
        (
            json!({"content": "x", "username": "discord helper"}),
            "username",
        ),
    ];
    for (payload, field) in &cases {
        let r = post(&url, payload).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{payload}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 50035, "{body}");
        assert_eq!(body["message"], "Invalid Form Body");
        assert!(body["errors"][field].is_object(), "{body}");
    }
    let r = post(&url, &json!({"allowed_mentions": {"parse": []}})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 50006);
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 50109);

    assert!(fake.messages().is_empty());
    let stats = fake.stats();
    assert_eq!(stats.rejected_400, cases.len() as u64 + 2);
    assert_eq!(stats.rejected_400_by_reason["content_length"], 1);
    assert_eq!(stats.rejected_400_by_reason["embeds_total_length"], 1);
    assert_eq!(stats.rejected_400_by_reason["empty_message"], 1);
    assert_eq!(stats.rejected_400_by_reason["username_forbidden"], 1);
}

#[tokio::test]
async fn multipart_with_files_is_accepted_and_recorded() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let payload = json!({
        "content": "see attached",
        "allowed_mentions": {"parse": []},
        "attachments": [{"id": 0, "filename": "out.txt"}, {"id": 1, "filename": "b.log"}]
    });
    let form = reqwest::multipart::Form::new()
        .text("payload_json", payload.to_string())
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(vec![b'a'; 1234])
                .file_name("out.txt")
                .mime_str("text/plain")
                .unwrap(),
        )
        .part(
            "files[1]",
            reqwest::multipart::Part::bytes(vec![0; 10]).file_name("b.log"),
        );
    let r = client()
        .post(format!("{}?wait=true", hook.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["attachments"][0]["filename"], "out.txt");
    assert_eq!(body["attachments"][0]["size"], 1234);
    let m = &fake.messages()[0];
    assert!(m.multipart);
    assert_eq!(m.payload["content"], "see attached");
    let files: Vec<_> = m
        .attachments
        .iter()
        .map(|a| (a.field.as_str(), a.filename.as_str(), a.size))
        .collect();
    assert_eq!(
        files,
        [("files[0]", "out.txt", 1234), ("files[1]", "b.log", 10)]
    );
    assert_eq!(m.attachments[0].content_type.as_deref(), Some("text/plain"));

    // Eleven files are too many.
    let mut form = reqwest::multipart::Form::new().text("payload_json", msg("x").to_string());
    for i in 0..11 {
        form = form.part(
            format!("files[{i}]"),
            reqwest::multipart::Part::bytes(vec![1]).file_name(format!("{i}.txt")),
        );
    }
    let r = client()
        .post(&hook.url)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], 50035);
}

#[tokio::test]
async fn unknown_wrong_token_and_deleted_webhooks_are_404() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let base = fake.api_base();
    for url in [
        format!("{base}/webhooks/999/{}", hook.token),
        format!("{base}/webhooks/{}/wrong-token", hook.id),
    ] {
        let r = post(&url, &msg("x")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"message": "Unknown Webhook", "code": 10015}));
    }
    assert_eq!(
        post(&hook.url, &msg("x")).await.status(),
        StatusCode::NO_CONTENT
    );
    // Deleted through the admin API (as someone in Discord would).
    let r = client()
        .post(fake.admin_url("faults"))
        .json(&json!({"kind": "delete_webhook", "id": hook.id}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = post(&hook.url, &msg("x")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(fake.stats().not_found, 3);
    let hooks: Value = reqwest::get(fake.admin_url("webhooks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hooks[0]["deleted"], true);
}

#[tokio::test]
async fn faults_are_served_in_order_then_cleared() {
    let fake = FakeDiscord::start(FakeConfig::without_rate_limits())
        .await
        .unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let admin = fake.admin_url("faults");
    let inject = |f: Value| {
        let admin = admin.clone();
        async move {
            let r = client().post(&admin).json(&f).send().await.unwrap();
            assert!(r.status().is_success(), "{f}");
        }
    };
    inject(json!({"kind": "status", "status": 503, "count": 2})).await;
    inject(json!({"kind": "reset", "count": 1})).await;
    inject(json!({"kind": "not_found"})).await;
    inject(json!({"kind": "rate_limit_storm", "count": 1, "retry_after_ms": 1500})).await;
    inject(json!({"kind": "slow", "delay_ms": 300})).await;

    for _ in 0..2 {
        assert_eq!(
            post(&hook.url, &msg("x")).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let err = post_result(&hook.url).await.unwrap_err();
    assert!(!err.is_status(), "a reset gives no response: {err}");
    assert_eq!(
        post(&hook.url, &msg("x")).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = post(&hook.url, &msg("x")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&r, "retry-after"), "2");
    assert_eq!(r.json::<Value>().await.unwrap()["retry_after"], 1.5);
    let started = tokio::time::Instant::now();
    assert_eq!(
        post(&hook.url, &msg("slow")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Queue drained: normal service.
    assert_eq!(
        post(&hook.url, &msg("x")).await.status(),
        StatusCode::NO_CONTENT
    );

    let stats = fake.stats_json();
    assert_eq!(stats["faults_served"]["status"], 2);
    assert_eq!(stats["faults_served"]["reset"], 1);
    assert_eq!(stats["faults_served"]["not_found"], 1);
    assert_eq!(stats["faults_served"]["rate_limit_storm"], 1);
    assert_eq!(stats["faults_served"]["slow"], 1);
    assert_eq!(stats["accepted"], 2);

    // Cleared faults are not served.
    inject(json!([{"kind": "status", "status": 500, "count": 10}])).await;
    let pending: Value = reqwest::get(&admin).await.unwrap().json().await.unwrap();
    assert_eq!(pending["pending"][0]["count"], 10);
    let r = client().delete(&admin).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        post(&hook.url, &msg("x")).await.status(),
        StatusCode::NO_CONTENT
    );
    // A fault for another webhook or route leaves this one alone.
    fake.inject(Fault {
        webhook_id: Some("123".into()),
        ..Fault::new(FaultKind::Reset, 1)
    });
    fake.inject(Fault {
        route: Some("POST /guilds/{guild_id}/channels".into()),
        ..Fault::new(
            FaultKind::RateLimitStorm {
                retry_after_ms: 10,
                scope: StormScope::Global,
            },
            1,
        )
    });
    assert_eq!(
        post(&hook.url, &msg("x")).await.status(),
        StatusCode::NO_CONTENT
    );
    let bad = client()
        .post(&admin)
        .json(&json!({"kind": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

async fn post_result(url: &str) -> reqwest::Result<reqwest::Response> {
    client().post(url).json(&msg("x")).send().await
}

#[tokio::test]
async fn thread_posts_must_target_a_thread_of_the_webhook_channel() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let thread = fake.create_thread(&hook.channel_id, "run-1").unwrap();
    let other = fake.create_channel("other", 0, None);
    let foreign = fake.create_thread(&other.id, "x").unwrap();
    let r = post(
        &format!("{}?wait=true&thread_id={}", hook.url, thread.id),
        &msg("in thread"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["channel_id"],
        json!(thread.id)
    );
    let r = post(&format!("{}?thread_id={}", hook.url, foreign.id), &msg("x")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = post(&format!("{}?thread_id=42", hook.url), &msg("x")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let m = fake.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].thread_id.as_deref(), Some(thread.id.as_str()));
    assert_eq!(m[0].channel_id, hook.channel_id);
    let filtered: Vec<Value> = reqwest::get(format!(
        "{}?thread_id={}",
        fake.admin_url("messages"),
        thread.id
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(filtered.len(), 1);
}

#[tokio::test]
async fn admin_api_lists_and_resets() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let r = client()
        .post(fake.admin_url("webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let hook: Value = r.json().await.unwrap();
    let url = hook["url"].as_str().unwrap();
    assert!(url.starts_with(&fake.api_base()));
    assert!(post(url, &msg("one")).await.status().is_success());
    let wait = fake.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(wait.len(), 1);
    let messages: Vec<Value> = reqwest::get(fake.admin_url("messages"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(messages[0]["payload"]["content"], "one");
    assert_eq!(messages[0]["seq"], 1);
    assert!(messages[0]["received_at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let stats: Value = reqwest::get(fake.admin_url("stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["accepted"], 1);
    let r = client().post(fake.admin_url("reset")).send().await.unwrap();
    assert!(r.status().is_success());
    assert!(fake.messages().is_empty());
    assert_eq!(fake.stats().accepted, 0);
    // The webhook survives a reset.
    assert!(post(url, &msg("two")).await.status().is_success());
    let channels: Vec<Value> = reqwest::get(fake.admin_url("channels"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(channels.len(), 1);
    fake.stop().await;
}

/// `max_concurrent_executes_by_webhook`: 1 for a client sending one request
/// at a time, 2 when two executes of one webhook overlap (held by a `slow`
/// fault), per webhook.
#[tokio::test]
async fn concurrent_executes_per_webhook_are_recorded() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let one = fake.create_webhook("runs").unwrap();
    let two = fake.create_webhook("runs").unwrap();
    for _ in 0..3 {
        assert!(post(&one.url, &msg("one at a time"))
            .await
            .status()
            .is_success());
    }
    let r = client()
        .post(fake.admin_url("faults"))
        .json(&json!({"kind": "slow", "delay_ms": 300, "count": 2, "webhook_id": two.id}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (ma, mb) = (msg("a"), msg("b"));
    let (a, b) = tokio::join!(post(&two.url, &ma), post(&two.url, &mb));
    assert!(a.status().is_success() && b.status().is_success());
    let stats = fake.stats_json();
    let most = &stats["max_concurrent_executes_by_webhook"];
    assert_eq!(most[&one.id], 1, "{stats}");
    assert_eq!(most[&two.id], 2, "{stats}");
    assert!(stats.get("executes_in_flight").is_none(), "{stats}");
}
