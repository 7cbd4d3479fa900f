//! The bot REST client against a scripted Discord stand-in on 127.0.0.1:0.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use discord::rest::{
    channel_kind, routes, CreateChannel, RestClient, RestConfig, RestError, RestObserver,
};
use ops::{Backoff, Secret};

const BOT_TOKEN: &str = "bot-SECRET-token";

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// One scripted answer: status, headers, body.
type Reply<B> = (u16, Vec<(&'static str, &'static str)>, B);

#[derive(Default)]
struct Fake {
    /// Responses to give, in order; a 500 when it runs out.
    script: Mutex<VecDeque<Reply<String>>>,
    seen: Mutex<Vec<Seen>>,
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    let next = fake.script.lock().unwrap().pop_front();
    let Some((status, headers, body)) = next else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl RestObserver for Recorder {
    fn request_done(&self, route: &'static str, status: u16) {
        self.events
            .lock()
            .unwrap()
            .push(format!("{route} -> {status}"));
    }
    fn rate_limited(&self, scope: &'static str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("rate_limited {scope}"));
    }
}

struct Harness {
    fake: Arc<Fake>,
    recorder: Arc<Recorder>,
    client: RestClient,
}

impl Harness {
    async fn start(max_retries: u32, script: Vec<Reply<&str>>) -> Self {
        let fake = Arc::new(Fake::default());
        *fake.script.lock().unwrap() = script
            .into_iter()
            .map(|(s, h, b)| (s, h, b.to_owned()))
            .collect();
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let recorder = Arc::new(Recorder::default());
        let client = RestClient::new(
            RestConfig {
                base_url: format!("http://{addr}/api/v10/"),
                bot_token: Secret::new(BOT_TOKEN.into()),
                timeout: Duration::from_secs(5),
                max_retries,
            },
            recorder.clone(),
        )
        .unwrap()
        .with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
        ));
        Self {
            fake,
            recorder,
            client,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.fake.seen.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.recorder.events.lock().unwrap().clone()
    }
}

fn header(seen: &Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

const CHANNEL: &str = r#"{"id":"500","name":"run-a-1-x","type":0,"parent_id":"7","guild_id":"1"}"#;

#[tokio::test]
async fn create_channel_sends_auth_reason_and_body() {
    let h = Harness::start(0, vec![(201, vec![], CHANNEL)]).await;
    let channel = h
        .client
        .create_channel(
            "1",
            &CreateChannel {
                name: "run-a-1-x".into(),
                kind: channel_kind::GUILD_TEXT,
                parent_id: Some("7".into()),
                permission_overwrites: vec![],
            },
            Some("run a/1: started"),
        )
        .await
        .unwrap();
    assert_eq!(channel.id, "500");
    assert_eq!(channel.parent_id.as_deref(), Some("7"));
    let seen = &h.seen()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/api/v10/guilds/1/channels");
    assert_eq!(
        header(seen, "authorization").as_deref(),
        Some("Bot bot-SECRET-token")
    );
    assert_eq!(
        header(seen, "user-agent").as_deref(),
        Some("DiscordBot (agentmon, 0.1)")
    );
    assert_eq!(
        header(seen, "x-audit-log-reason").as_deref(),
        Some("run%20a%2F1%3A%20started")
    );
    assert!(header(seen, "traceparent").is_some());
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name":"run-a-1-x","type":0,"parent_id":"7"})
    );
    assert_eq!(h.events(), [format!("{} -> 201", routes::CREATE_CHANNEL)]);
}

#[tokio::test]
async fn rate_limit_is_waited_out_and_not_a_failure() {
    let limited = (
        429,
        vec![("x-ratelimit-scope", "user"), ("retry-after", "1")],
        r#"{"message":"You are being rate limited.","retry_after":0.05,"global":false}"#,
    );
    let h = Harness::start(0, vec![limited, (200, vec![], "[]")]).await;
    let started = tokio::time::Instant::now();
    let channels = h.client.list_guild_channels("1").await.unwrap();
    assert!(channels.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "retry_after from the body is honoured"
    );
    let route = routes::LIST_GUILD_CHANNELS;
    assert_eq!(
        h.events(),
        [
            format!("{route} -> 429"),
            "rate_limited user".into(),
            format!("{route} -> 200")
        ]
    );
    assert_eq!(h.client.invalid_requests(), 1);
}

#[tokio::test]
async fn a_long_rate_limit_fails_the_call() {
    let limited = (
        429,
        vec![("x-ratelimit-global", "true")],
        r#"{"retry_after":3600,"global":true}"#,
    );
    let h = Harness::start(3, vec![limited]).await;
    let err = h.client.delete_webhook("9", None).await.unwrap_err();
    assert_eq!(err, RestError::RateLimitedTooLong);
    assert!(h.events().contains(&"rate_limited global".to_owned()));
}

#[tokio::test]
async fn server_errors_are_retried_up_to_the_limit() {
    let h = Harness::start(
        2,
        vec![(500, vec![], ""), (502, vec![], ""), (204, vec![], "")],
    )
    .await;
    h.client
        .delete_channel("5", Some("archived"))
        .await
        .unwrap();
    assert_eq!(h.seen().len(), 3);

    let h = Harness::start(1, vec![(500, vec![], ""), (502, vec![], "bad gateway")]).await;
    let err = h.client.delete_channel("5", None).await.unwrap_err();
    assert!(
        matches!(err, RestError::Http { status: 502, .. }),
        "{err:?}"
    );
    assert_eq!(h.seen().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_discords_code() {
    let h = Harness::start(
        3,
        vec![(404, vec![], r#"{"message":"Unknown Channel","code":10003}"#)],
    )
    .await;
    let err = h
        .client
        .create_webhook("5", "agentmon", None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RestError::Http {
            status: 404,
            code: Some(10003),
            message: "Unknown Channel".into()
        }
    );
    assert_eq!(h.seen().len(), 1);
    assert!(!err.to_string().contains("SECRET"));
}

#[tokio::test]
async fn webhook_token_comes_back_secret() {
    let h = Harness::start(
        0,
        vec![(
            200,
            vec![],
            r#"{"id":"77","token":"hook-SECRET","channel_id":"5"}"#,
        )],
    )
    .await;
    let hook = h
        .client
        .create_webhook("5", "agentmon", None)
        .await
        .unwrap();
    assert_eq!(
        hook.token.as_ref().map(|t| t.expose().as_str()),
        Some("hook-SECRET")
    );
    assert!(!format!("{hook:?}").contains("SECRET"));
    let body: serde_json::Value = serde_json::from_slice(&h.seen()[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"name":"agentmon"}));
}

#[tokio::test]
async fn interaction_edits_use_no_bot_token_and_hide_the_interaction_token() {
    let h = Harness::start(
        0,
        vec![(
            400,
            vec![],
            r#"{"message":"bad token itok-SECRET","code":50027}"#,
        )],
    )
    .await;
    let token = Secret::new("itok-SECRET".to_owned());
    let err = h
        .client
        .edit_original_interaction_response("42", &token, &serde_json::json!({"content":"ok"}))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("SECRET"), "{err}");
    let seen = &h.seen()[0];
    assert_eq!(
        seen.path,
        "/api/v10/webhooks/42/itok-SECRET/messages/@original"
    );
    assert_eq!(header(seen, "authorization"), None);
    assert_eq!(
        h.events(),
        [format!("{} -> 400", routes::EDIT_ORIGINAL_RESPONSE)]
    );
}

#[tokio::test]
async fn thread_and_commands_hit_their_routes() {
    let h = Harness::start(
        0,
        vec![
            (
                201,
                vec![],
                r#"{"id":"9","name":"run","type":11,"parent_id":"5"}"#,
            ),
            (200, vec![], "[]"),
            (200, vec![], "[]"),
        ],
    )
    .await;
    let thread = h.client.create_thread("5", "run", None).await.unwrap();
    assert_eq!(thread.kind, channel_kind::PUBLIC_THREAD);
    let commands = serde_json::json!([{"name":"input"}]);
    h.client
        .bulk_overwrite_guild_commands("42", "1", &commands)
        .await
        .unwrap();
    h.client
        .bulk_overwrite_global_commands("42", &commands)
        .await
        .unwrap();
    let paths: Vec<_> = h
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /api/v10/channels/5/threads",
            "PUT /api/v10/applications/42/guilds/1/commands",
            "PUT /api/v10/applications/42/commands",
        ]
    );
    let body: serde_json::Value = serde_json::from_slice(&h.seen()[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"name":"run","type":11}));
}

#[tokio::test]
async fn undecodable_bodies_are_decode_errors() {
    let h = Harness::start(0, vec![(200, vec![], r#"{"id": 5, "secret":"x"}"#)]).await;
    let err = h.client.list_guild_channels("1").await.unwrap_err();
    assert!(matches!(err, RestError::Decode(_)), "{err:?}");
}

/// A budget shared with another replica: hands out the waits it is given,
/// then fails (the store unreachable).
struct Budget {
    waits: Mutex<VecDeque<Duration>>,
    asked: Mutex<u32>,
}

impl discord::rest::SharedBudget for Budget {
    fn reserve(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send + '_>>
    {
        *self.asked.lock().unwrap() += 1;
        let next = self.waits.lock().unwrap().pop_front();
        Box::pin(async move { next.ok_or_else(|| "store unreachable".to_owned()) })
    }
}

#[tokio::test]
async fn every_request_waits_for_its_slot_in_the_shared_budget() {
    let h = Harness::start(0, vec![(200, vec![], "[]"), (200, vec![], "[]")]).await;
    let budget = Arc::new(Budget {
        waits: Mutex::new(VecDeque::from([Duration::from_millis(300)])),
        asked: Mutex::new(0),
    });
    let client = h.client.clone().with_shared_budget(budget.clone());
    let started = tokio::time::Instant::now();
    client.list_guild_channels("1").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "sent before its slot in the shared budget"
    );
    // The store gone: the request still goes, on the client's own pacing.
    client.list_guild_channels("1").await.unwrap();
    assert_eq!(*budget.asked.lock().unwrap(), 2);
    assert_eq!(h.seen().len(), 2);
}
