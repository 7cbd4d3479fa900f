//! agentmon's own Discord clients (`discord::webhook`, `discord::rest`) against
//! the fake: what they parse from its answers is what they would from Discord's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use discord::embed::{Attachment, Embed, EmbedField, WebhookMessage};
use discord::ratelimit::{Limiter, LimiterConfig, Scope};
use discord::rest::{channel_kind, CreateChannel, NoopObserver, RestClient, RestConfig, RestError};
use discord::webhook::{ExecuteOutcome, WebhookClient};
use discord::webhook_url::WebhookUrl;
use fake_discord::{FakeConfig, FakeDiscord, Fault, FaultKind};
use ops::Secret;

fn message(text: &str) -> WebhookMessage {
    WebhookMessage {
        embeds: vec![Embed {
            title: Some("⚡ Bash".into()),
            description: Some(text.into()),
            color: Some(0xF3_9C12),
            fields: vec![EmbedField {
                name: "exit".into(),
                value: "0".into(),
                inline: true,
            }],
            ..Embed::default()
        }],
        ..WebhookMessage::default()
    }
}

#[tokio::test]
async fn webhook_client_reads_headers_and_classifies_every_answer() {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let url = WebhookUrl::parse(&hook.url).unwrap();
    let client = WebhookClient::new(Duration::from_secs(5)).unwrap();

    for left in (0..5).rev() {
        match client.execute(&url, &message("ls")).await {
            ExecuteOutcome::Delivered {
                message_id,
                headers,
            } => {
                assert!(message_id.is_some());
                assert_eq!(headers.limit, Some(5));
                assert_eq!(headers.remaining, Some(left));
                assert!(headers
                    .reset_after
                    .is_some_and(|d| d <= Duration::from_secs(2)));
                assert!(headers.bucket.is_some());
            }
            other => panic!("expected delivery, got {other:?}"),
        }
    }
    match client.execute(&url, &message("too soon")).await {
        ExecuteOutcome::RateLimited {
            retry_after,
            scope,
            global,
        } => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(2));
            assert_eq!(scope, Some(Scope::User));
            assert!(!global);
        }
        other => panic!("expected 429, got {other:?}"),
    }

    fake.inject(Fault::new(
        FaultKind::Status {
            status: 503,
            body: None,
        },
        1,
    ));
    fake.inject(Fault::new(FaultKind::Reset, 1));
    fake.inject(Fault::new(FaultKind::NotFound, 1));
    assert!(matches!(
        client.execute(&url, &message("x")).await,
        ExecuteOutcome::ServerError { status: 503, .. }
    ));
    assert!(matches!(
        client.execute(&url, &message("x")).await,
        ExecuteOutcome::Network { .. }
    ));
    assert!(matches!(
        client.execute(&url, &message("x")).await,
        ExecuteOutcome::Gone { status: 404 }
    ));

    // Unfitted payloads are refused with Discord's body, kept for the DLQ.
    let mut too_big = message("x");
    too_big.embeds[0].title = Some("t".repeat(300));
    tokio::time::sleep(Duration::from_secs(2)).await;
    match client.execute(&url, &too_big).await {
        ExecuteOutcome::Rejected { status, body } => {
            assert_eq!(status, 400);
            assert!(body.contains("50035"), "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }

    // Files go as multipart.
    let mut with_file = message("see file");
    with_file.files.push(Attachment {
        filename: "output.txt".into(),
        bytes: vec![b'x'; 4096],
    });
    assert!(matches!(
        client.execute(&url, &with_file).await,
        ExecuteOutcome::Delivered { .. }
    ));
    let last = fake.messages().pop().unwrap();
    assert!(last.multipart);
    assert_eq!(last.attachments[0].filename, "output.txt");
    assert_eq!(last.attachments[0].size, 4096);
    assert_eq!(
        last.payload["allowed_mentions"],
        serde_json::json!({"parse": []})
    );

    // A deleted webhook is gone.
    assert!(fake.delete_webhook(&hook.id));
    assert!(matches!(
        client.execute(&url, &message("x")).await,
        ExecuteOutcome::Gone { status: 404 }
    ));
    assert_eq!(fake.stats().missing_allowed_mentions, 0);
}

#[tokio::test]
async fn the_limiter_fed_by_the_fakes_headers_never_sees_a_429() {
    let fake = FakeDiscord::start(FakeConfig {
        webhook_window: Duration::from_millis(500),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let hook = fake.create_webhook("runs").unwrap();
    let url = WebhookUrl::parse(&hook.url).unwrap();
    let client = WebhookClient::new(Duration::from_secs(5)).unwrap();
    let limiter = Limiter::new(LimiterConfig {
        global_per_second: 50,
        channel_messages_per_minute: Some(30),
        ..LimiterConfig::default()
    });
    let route = format!("webhook:{}", hook.id);
    for i in 0..12 {
        let permit = limiter.acquire_message(&route, &hook.channel_id).await;
        match client.execute(&url, &message(&format!("{i}"))).await {
            ExecuteOutcome::Delivered { headers, .. } => permit.done(&headers),
            other => panic!("request {i}: {other:?}"),
        }
    }
    let stats = fake.stats();
    assert_eq!(stats.accepted, 12);
    assert!(stats.rate_limited.is_empty(), "{:?}", stats.rate_limited);
}

#[tokio::test]
async fn rest_client_provisions_against_the_fake() {
    let fake = FakeDiscord::start(FakeConfig {
        bot_token: Some("bot-secret".into()),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let rest = RestClient::new(
        RestConfig {
            base_url: fake.api_base(),
            bot_token: Secret::new("bot-secret".into()),
            timeout: Duration::from_secs(5),
            max_retries: 1,
        },
        Arc::new(NoopObserver),
    )
    .unwrap();
    let category = rest
        .create_channel(
            "1",
            &CreateChannel {
                name: "Agent Runs".into(),
                kind: channel_kind::GUILD_CATEGORY,
                ..CreateChannel::default()
            },
            Some("agentmon category"),
        )
        .await
        .unwrap();
    let channel = rest
        .create_channel(
            "1",
            &CreateChannel {
                name: "run-t-1-abc".into(),
                kind: channel_kind::GUILD_TEXT,
                parent_id: Some(category.id.clone()),
                ..CreateChannel::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(channel.parent_id.as_deref(), Some(category.id.as_str()));
    let list = rest.list_guild_channels("1").await.unwrap();
    assert_eq!(list.len(), 2);
    let hook = rest
        .create_webhook(&channel.id, "agentmon", None)
        .await
        .unwrap();
    let url = hook.url(&fake.api_base()).unwrap();
    let client = WebhookClient::new(Duration::from_secs(5)).unwrap();
    assert!(matches!(
        client.execute(&url, &message("hello")).await,
        ExecuteOutcome::Delivered { .. }
    ));
    let thread = rest
        .create_thread(&channel.id, "run 2", None)
        .await
        .unwrap();
    assert_eq!(thread.kind, channel_kind::PUBLIC_THREAD);
    rest.bulk_overwrite_guild_commands(
        "42",
        "1",
        &serde_json::json!([{"name": "status", "description": "Show status"}]),
    )
    .await
    .unwrap();
    rest.edit_original_interaction_response(
        "42",
        &Secret::new("itoken".into()),
        &serde_json::json!({"content": "forwarded"}),
    )
    .await
    .unwrap();
    assert_eq!(fake.interaction_edits().len(), 1);
    rest.delete_webhook(&hook.id, None).await.unwrap();
    assert!(matches!(
        client.execute(&url, &message("x")).await,
        ExecuteOutcome::Gone { .. }
    ));
    let err = rest
        .create_channel(
            "1",
            &CreateChannel {
                name: "Not Lowercase".into(),
                ..CreateChannel::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(50035));
    rest.delete_channel(&channel.id, None).await.unwrap();
    assert!(rest
        .delete_channel(&channel.id, None)
        .await
        .unwrap_err()
        .is_not_found());

    // A wrong token is a 401 without the token in the error.
    let wrong = RestClient::new(
        RestConfig {
            base_url: fake.api_base(),
            bot_token: Secret::new("nope-SECRET".into()),
            timeout: Duration::from_secs(5),
            max_retries: 0,
        },
        Arc::new(NoopObserver),
    )
    .unwrap();
    let err = wrong.list_guild_channels("1").await.unwrap_err();
    assert!(matches!(err, RestError::Http { status: 401, .. }), "{err}");
    assert!(!err.to_string().contains("SECRET"));
}
