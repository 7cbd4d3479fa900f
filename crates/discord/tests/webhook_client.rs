//! The webhook client against a tiny Discord stand-in on 127.0.0.1:0: request
//! shape (JSON and multipart) and how every status is classified.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use discord::embed::{Attachment, Embed, WebhookMessage};
use discord::ratelimit::Scope;
use discord::webhook::{ExecuteOutcome, WebhookClient};
use discord::webhook_url::WebhookUrl;

const TOKEN: &str = "tok-SECRET_abcdef0123456789";

#[derive(Debug, Clone)]
struct Seen {
    query: Option<String>,
    content_type: String,
    user_agent: String,
    body: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Answers by webhook id: the id is the status to return.
async fn execute(
    State(log): State<Log>,
    Path((id, token)): Path<(u16, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    assert_eq!(token, TOKEN);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    log.lock().unwrap().push(Seen {
        query,
        content_type: header("content-type"),
        user_agent: header("user-agent"),
        body: body.to_vec(),
    });
    let status = StatusCode::from_u16(id).unwrap();
    match id {
        200 => (
            [
                ("x-ratelimit-remaining", "4"),
                ("x-ratelimit-reset-after", "1.5"),
            ],
            r#"{"id":"1234","content":"hi"}"#,
        )
            .into_response(),
        429 => (
            status,
            [("x-ratelimit-scope", "user"), ("retry-after", "3")],
            r#"{"message":"You are being rate limited.","retry_after":2.5,"global":false}"#,
        )
            .into_response(),
        400 => (status, r#"{"code":50035,"message":"Invalid Form Body"}"#).into_response(),
        _ => status.into_response(),
    }
}

async fn start() -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/api/v10/webhooks/{id}/{token}", post(execute))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/v10"), log)
}

fn url(base: &str, id: u16) -> WebhookUrl {
    WebhookUrl::parse(&format!("{base}/webhooks/{id}/{TOKEN}?thread_id=77")).unwrap()
}

fn message() -> WebhookMessage {
    WebhookMessage {
        content: Some("hello".into()),
        embeds: vec![Embed {
            title: Some("t".into()),
            ..Embed::default()
        }],
        ..WebhookMessage::default()
    }
}

fn client() -> WebhookClient {
    WebhookClient::new(Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn json_post_is_delivered_with_wait_and_thread() {
    let (base, log) = start().await;
    let outcome = client().execute(&url(&base, 200), &message()).await;
    let ExecuteOutcome::Delivered {
        message_id,
        headers,
    } = outcome
    else {
        panic!("expected delivery, got {outcome:?}");
    };
    assert_eq!(message_id.as_deref(), Some("1234"));
    assert_eq!(headers.remaining, Some(4));
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(seen.query.as_deref(), Some("wait=true&thread_id=77"));
    assert_eq!(seen.content_type, "application/json");
    assert_eq!(seen.user_agent, discord::webhook::USER_AGENT);
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"content":"hello","embeds":[{"title":"t"}],"allowed_mentions":{"parse":[]}})
    );
}

/// `(name, filename, content)` of each part of a multipart body.
fn parts(content_type: &str, body: &[u8]) -> Vec<(String, Option<String>, Vec<u8>)> {
    let boundary = content_type.split("boundary=").nth(1).unwrap();
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(body).into_owned();
    let mut out = Vec::new();
    for part in text.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let (head, content) = part.split_once("\r\n\r\n").unwrap();
        let attr = |key: &str| {
            head.split(&format!("{key}=\""))
                .nth(1)
                .map(|rest| rest.split('"').next().unwrap().to_owned())
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        out.push((
            attr(" name").unwrap(),
            attr("filename"),
            content.as_bytes().to_vec(),
        ));
    }
    out
}

#[tokio::test]
async fn files_go_as_multipart_with_attachments_in_the_payload() {
    let (base, log) = start().await;
    let mut msg = message();
    msg.files = vec![
        Attachment {
            filename: "a.txt".into(),
            bytes: b"first file".to_vec(),
        },
        Attachment {
            filename: "b.log".into(),
            bytes: b"second".to_vec(),
        },
    ];
    let outcome = client().execute(&url(&base, 200), &msg).await;
    assert!(
        matches!(outcome, ExecuteOutcome::Delivered { .. }),
        "{outcome:?}"
    );
    let seen = log.lock().unwrap()[0].clone();
    assert!(
        seen.content_type.starts_with("multipart/form-data"),
        "{}",
        seen.content_type
    );
    let parts = parts(&seen.content_type, &seen.body);
    let names: Vec<_> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["payload_json", "files[0]", "files[1]"]);
    let payload: serde_json::Value = serde_json::from_slice(&parts[0].2).unwrap();
    assert_eq!(payload["content"], "hello");
    assert_eq!(
        payload["attachments"],
        serde_json::json!([{"id":0,"filename":"a.txt"},{"id":1,"filename":"b.log"}])
    );
    assert_eq!(parts[1].1.as_deref(), Some("a.txt"));
    assert_eq!(parts[1].2, b"first file");
    assert_eq!(parts[2].1.as_deref(), Some("b.log"));
    assert_eq!(parts[2].2, b"second");
}

#[tokio::test]
async fn every_status_is_classified() {
    let (base, _log) = start().await;
    let client = client();
    let msg = message();
    let run = |id| {
        let client = client.clone();
        let url = url(&base, id);
        let msg = msg.clone();
        async move { client.execute(&url, &msg).await }
    };
    assert!(matches!(
        run(204).await,
        ExecuteOutcome::Delivered {
            message_id: None,
            ..
        }
    ));
    assert_eq!(
        run(429).await,
        ExecuteOutcome::RateLimited {
            retry_after: Duration::from_millis(2500),
            scope: Some(Scope::User),
            global: false
        }
    );
    assert_eq!(
        run(400).await,
        ExecuteOutcome::Rejected {
            status: 400,
            body: r#"{"code":50035,"message":"Invalid Form Body"}"#.into()
        }
    );
    assert_eq!(run(401).await, ExecuteOutcome::Gone { status: 401 });
    assert_eq!(run(404).await, ExecuteOutcome::Gone { status: 404 });
    assert!(matches!(
        run(500).await,
        ExecuteOutcome::ServerError { status: 500, .. }
    ));
    assert!(matches!(
        run(503).await,
        ExecuteOutcome::ServerError { status: 503, .. }
    ));
}

#[tokio::test]
async fn network_errors_never_contain_the_token() {
    // Bind and drop a listener: the port is closed, the connection is refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = url(&format!("http://{addr}/api/v10"), 200);
    let outcome = client().execute(&url, &message()).await;
    let ExecuteOutcome::Network { error, .. } = outcome else {
        panic!("expected a network error, got {outcome:?}");
    };
    assert!(!error.is_empty());
    assert!(!error.contains("SECRET"), "token leaked: {error}");
    assert!(error.contains("connect"), "{error}");
}
