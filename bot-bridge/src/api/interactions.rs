//! `POST /interactions`: Discord's interactions endpoint.
//!
//! Discord signs every request with the application's ed25519 key over
//! `timestamp + body`; anything unsigned, wrongly signed or older/newer than
//! five minutes is refused with 401 (Discord also probes this on purpose).
//! `/input` relays text to the run's watcher and answers within Discord's 3 s:
//! directly when the watcher answers within `defer_after`, otherwise with a
//! deferred reply that is edited once the watcher answered.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::{Signature, VerifyingKey};
use ops::Secret;
use serde_json::{json, Value};

use super::ApiError;
use crate::access::Verdict;
use crate::app::AppState;
use crate::events::{Command, ErrorKind, InteractionHandled, Outcome, SignatureRefused};
use crate::relay::{InputMessage, RelayOutcome};
use crate::store::RunStatus;

/// Header with the hex ed25519 signature.
pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
/// Header with the unix-seconds timestamp that is signed with the body.
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";
/// Accepted clock difference between Discord and bot-bridge.
pub const MAX_SKEW_SECS: i64 = 300;

/// Interaction types and response types used here.
const PING: u64 = 1;
const APPLICATION_COMMAND: u64 = 2;
const PONG: u64 = 1;
const CHANNEL_MESSAGE: u64 = 4;
const DEFERRED_CHANNEL_MESSAGE: u64 = 5;
/// Message flag: only the invoking user sees the reply.
const EPHEMERAL: u64 = 64;

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature headers")]
    Missing,
    #[error("malformed signature or timestamp")]
    Malformed,
    #[error("timestamp outside the 5 minute window")]
    Stale,
    #[error("signature does not verify")]
    Invalid,
}

/// At most one log line per this period for refused signatures.
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets one event through per period and counts the rest, so an
/// unauthenticated flood costs a counter increment, not a log line each.
#[derive(Debug, Default)]
pub struct LogThrottle {
    state: Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to log this event, and how many went unlogged before it.
    pub fn admit(&self, now: tokio::time::Instant) -> (bool, u64) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due =
            s.0.is_none_or(|last| now.duration_since(last) >= REFUSED_LOG_EVERY);
        if due {
            let unlogged = s.1;
            *s = (Some(now), 0);
            (true, unlogged)
        } else {
            s.1 += 1;
            (false, s.1)
        }
    }
}

/// One per process: the flood it guards against is per process too.
static REFUSED_LOG: LogThrottle = LogThrottle::new();

/// Checks Discord's signature over `timestamp + body` and the timestamp's age.
pub fn verify(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let ts = headers.get(TIMESTAMP_HEADER).and_then(|v| v.to_str().ok());
    let (Some(sig), Some(ts)) = (sig, ts) else {
        return Err(SignatureError::Missing);
    };
    let mut raw = [0u8; 64];
    hex::decode_to_slice(sig.trim(), &mut raw).map_err(|_| SignatureError::Malformed)?;
    let signed_at: i64 = ts.trim().parse().map_err(|_| SignatureError::Malformed)?;
    if (now - signed_at).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let mut message = Vec::with_capacity(ts.len() + body.len());
    message.extend_from_slice(ts.as_bytes());
    message.extend_from_slice(body);
    key.verify_strict(&message, &Signature::from_bytes(&raw))
        .map_err(|_| SignatureError::Invalid)
}

fn ephemeral(content: &str) -> Response {
    Json(json!({
        "type": CHANNEL_MESSAGE,
        "data": {"content": content, "flags": EPHEMERAL, "allowed_mentions": {"parse": []}},
    }))
    .into_response()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn option_text(data: &Value, name: &str) -> Option<String> {
    data.get("options")?
        .as_array()?
        .iter()
        .find(|o| o.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .map(str::to_owned)
}

/// The ephemeral answer to a member who may not send input.
fn refusal(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::NotConfigured => {
            "input is disabled: bot-bridge has no operators configured \
             (an admin sets OPERATOR_ROLE_IDS or OPERATOR_USER_IDS)"
        }
        _ => {
            "only operators may send input to this agent \
             (an admin adds your role to OPERATOR_ROLE_IDS or your id to OPERATOR_USER_IDS)"
        }
    }
}

fn outcome_of(r: RelayOutcome) -> Outcome {
    match r {
        RelayOutcome::Forwarded => Outcome::Forwarded,
        RelayOutcome::Busy => Outcome::Busy,
        RelayOutcome::Unavailable => Outcome::Unavailable,
        RelayOutcome::Rejected(_) => Outcome::Rejected,
    }
}

/// The handler.
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(key) = state.settings().public_key else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "interactions_disabled",
            "DISCORD_PUBLIC_KEY is not configured",
        )
        .into_response();
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(e.status(), "bad_request", "cannot read the request body")
                .into_response()
        }
    };
    if let Err(e) = verify(&key, &headers, &body, crate::runs::now_unix()) {
        let (log, unlogged) = REFUSED_LOG.admit(tokio::time::Instant::now());
        SignatureRefused {
            error: &e,
            log,
            unlogged,
        }
        .emit(state.metrics());
        return ApiError::unauthorized("invalid request signature").into_response();
    }
    let Ok(interaction) = serde_json::from_slice::<Value>(&body) else {
        return ApiError::bad_request("invalid interaction JSON").into_response();
    };
    match interaction.get("type").and_then(Value::as_u64) {
        Some(PING) => {
            InteractionHandled {
                command: Command::Ping,
                outcome: Outcome::Ok,
                run_id: None,
            }
            .emit(state.metrics());
            Json(json!({"type": PONG})).into_response()
        }
        Some(APPLICATION_COMMAND) => command(state, interaction).await,
        _ => {
            InteractionHandled {
                command: Command::Unknown,
                outcome: Outcome::Invalid,
                run_id: None,
            }
            .emit(state.metrics());
            ApiError::bad_request("unsupported interaction type").into_response()
        }
    }
}

async fn command(state: AppState, interaction: Value) -> Response {
    let data = interaction.get("data").cloned().unwrap_or(Value::Null);
    let name = str_at(&data, &["name"]).unwrap_or("");
    let cmd = match name {
        "input" => Command::Input,
        "status" => Command::Status,
        _ => Command::Unknown,
    };
    let done = |outcome: Outcome, run_id: Option<&str>, text: &str| {
        InteractionHandled {
            command: cmd,
            outcome,
            run_id,
        }
        .emit(state.metrics());
        ephemeral(text)
    };
    if cmd == Command::Unknown {
        return done(Outcome::Invalid, None, "unknown command");
    }
    if cmd == Command::Input {
        let verdict = state.settings().operators.check(&interaction);
        if verdict != Verdict::Allowed {
            let user_id = str_at(&interaction, &["member", "user", "id"])
                .or_else(|| str_at(&interaction, &["user", "id"]))
                .unwrap_or("");
            tracing::info!(user_id, ?verdict, "input refused: not an operator");
            return done(Outcome::Forbidden, None, refusal(verdict));
        }
    }
    let channel_id = str_at(&interaction, &["channel_id"])
        .or_else(|| str_at(&interaction, &["channel", "id"]))
        .unwrap_or("")
        .to_owned();
    let run = match state.store().find_by_channel(channel_id).await {
        Ok(r) => r,
        Err(e) => {
            state.report(ErrorKind::Store, None, &e);
            return done(
                Outcome::Unavailable,
                None,
                "bot-bridge cannot read its store, try again",
            );
        }
    };
    let Some(run) = run else {
        return done(Outcome::NotRunChannel, None, "not a run channel");
    };
    if cmd == Command::Status {
        let view = crate::runs::RunView::from(&run);
        let text = format!(
            "run `{}` ({} attempt {}): **{}**, created {}, channel <#{}>",
            view.run_id,
            view.task_id,
            view.attempt,
            view.status.as_str(),
            view.created_at,
            view.channel_id.as_deref().unwrap_or("?"),
        );
        return done(Outcome::Ok, Some(&run.run_id), &text);
    }
    if run.status != RunStatus::Active {
        return done(Outcome::RunFinished, Some(&run.run_id), "run finished");
    }
    let Some(stored_url) = run.input_url.clone() else {
        return done(Outcome::Unavailable, Some(&run.run_id), "agent unavailable");
    };
    // Checked again at every relay: a row stored by an older version, or
    // before INPUT_URL_ALLOW was narrowed, must not send signed input elsewhere.
    let input_url = match state.settings().input_url_policy.check(&stored_url) {
        Ok(u) => u,
        Err(why) => {
            state.report(ErrorKind::Relay, Some(&run.run_id), &why);
            return done(
                Outcome::Rejected,
                Some(&run.run_id),
                "the run's input address is not allowed by INPUT_URL_ALLOW",
            );
        }
    };
    let Some(text) = option_text(&data, "text").filter(|t| !t.trim().is_empty()) else {
        return done(
            Outcome::Invalid,
            Some(&run.run_id),
            "nothing to send: /input text:<...>",
        );
    };
    // Claimed in the shared store right before acting: whichever replica (or
    // delivery) claims the id first relays it; a repeat is acknowledged as
    // before ("forwarded", the contract for a replayed interaction) but not
    // relayed again, so operator input reaches the agent once.
    let interaction_id = str_at(&interaction, &["id"]).unwrap_or("").to_owned();
    if !interaction_id.is_empty() {
        match state
            .store()
            .claim_interaction(interaction_id, crate::runs::now_unix())
            .await
        {
            Ok(true) => {}
            Ok(false) => return done(Outcome::Duplicate, Some(&run.run_id), "forwarded"),
            Err(e) => {
                state.report(ErrorKind::Store, Some(&run.run_id), &e);
                return done(
                    Outcome::Unavailable,
                    Some(&run.run_id),
                    "bot-bridge cannot write its store, try again",
                );
            }
        }
    }
    let user = str_at(&interaction, &["member", "user", "username"])
        .or_else(|| str_at(&interaction, &["user", "username"]))
        .unwrap_or("unknown")
        .to_owned();
    let msg = InputMessage {
        run_id: run.run_id.clone(),
        user,
        text,
        id: str_at(&interaction, &["id"]).unwrap_or("").to_owned(),
    };
    let relay = state.inner.relay.clone();
    let secret = run.input_secret.clone();
    let forward = async move { relay.forward(&input_url, &secret, &msg).await };
    // The spawned task keeps this request's trace so the watcher joins it.
    let mut task = match ops::trace::TraceContext::current() {
        Some(cx) => tokio::spawn(cx.scope(forward)),
        None => tokio::spawn(forward),
    };
    match tokio::time::timeout(state.settings().defer_after, &mut task).await {
        Ok(result) => {
            let outcome = result.unwrap_or(RelayOutcome::Unavailable);
            if matches!(
                outcome,
                RelayOutcome::Rejected(_) | RelayOutcome::Unavailable
            ) {
                state.report(ErrorKind::Relay, Some(&run.run_id), &outcome.message());
            }
            done(outcome_of(outcome), Some(&run.run_id), outcome.message())
        }
        Err(_) => {
            let app_id = state
                .settings()
                .application_id
                .clone()
                .or_else(|| str_at(&interaction, &["application_id"]).map(str::to_owned));
            let token = str_at(&interaction, &["token"]).map(|t| Secret::new(t.to_owned()));
            let run_id = run.run_id.clone();
            let later = state.clone();
            tokio::spawn(async move {
                let outcome = task.await.unwrap_or(RelayOutcome::Unavailable);
                InteractionHandled {
                    command: Command::Input,
                    outcome: outcome_of(outcome),
                    run_id: Some(&run_id),
                }
                .emit(later.metrics());
                let (Some(app_id), Some(token)) = (app_id, token) else {
                    return;
                };
                let body = json!({"content": outcome.message(), "allowed_mentions": {"parse": []}});
                if let Err(e) = later
                    .discord()
                    .edit_original_interaction_response(&app_id, &token, &body)
                    .await
                {
                    later.report(ErrorKind::Discord, Some(&run_id), &e);
                }
            });
            Json(json!({"type": DEFERRED_CHANNEL_MESSAGE, "data": {"flags": EPHEMERAL}}))
                .into_response()
        }
    }
}

/// Registers `/input` and `/status` as guild commands of `GUILD_ID`.
pub async fn register_commands(state: &AppState) -> Result<(), crate::guild::DiscordError> {
    let Some(app_id) = state.settings().application_id.clone() else {
        return Ok(());
    };
    let guild = state.settings().guild_id.clone();
    state
        .discord()
        .bulk_overwrite_guild_commands(&app_id, &guild, &crate::guild::commands())
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::routing::post;
    use ed25519_dalek::{Signer, SigningKey};
    use tokio::sync::{mpsc, Mutex};

    use super::*;
    use crate::app::fixture;
    use crate::app::fixture::owner;
    use crate::runs::{AttemptValue, NewRun};

    fn signed(key: &SigningKey, ts: i64, body: &[u8]) -> HeaderMap {
        let mut msg = ts.to_string().into_bytes();
        msg.extend_from_slice(body);
        let sig = key.sign(&msg);
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            hex::encode(sig.to_bytes()).parse().unwrap(),
        );
        h.insert(TIMESTAMP_HEADER, ts.to_string().parse().unwrap());
        h
    }

    #[tokio::test(start_paused = true)]
    async fn refused_signatures_log_once_per_period_with_a_count() {
        let t = LogThrottle::new();
        let start = tokio::time::Instant::now();
        assert_eq!(t.admit(start), (true, 0));
        for i in 1..=1000 {
            assert_eq!(t.admit(start + Duration::from_millis(i)), (false, i));
        }
        let later = start + REFUSED_LOG_EVERY;
        assert_eq!(t.admit(later), (true, 1000));
        assert_eq!(t.admit(later), (false, 1));
    }

    #[test]
    fn verification_accepts_only_fresh_valid_signatures() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let vk = sk.verifying_key();
        let body = br#"{"type":1}"#;
        let now = 1_700_000_000;
        assert_eq!(verify(&vk, &signed(&sk, now, body), body, now), Ok(()));
        assert_eq!(
            verify(&vk, &signed(&sk, now, body), b"{\"type\":2}", now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(&vk, &signed(&sk, now - 301, body), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&vk, &signed(&sk, now + 301, body), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&vk, &HeaderMap::new(), body, now),
            Err(SignatureError::Missing)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert_eq!(
            verify(&vk, &signed(&other, now, body), body, now),
            Err(SignatureError::Invalid)
        );
        let mut bad = signed(&sk, now, body);
        bad.insert(SIGNATURE_HEADER, "zz".parse().unwrap());
        assert_eq!(verify(&vk, &bad, body, now), Err(SignatureError::Malformed));
    }

    /// What the test watcher received: (timestamp, signature, body).
    type Received = (String, String, Vec<u8>);

    /// A watcher input endpoint that records requests and answers `status`
    /// once `gate` lets it.
    async fn watcher(
        status: u16,
        gate: Option<Arc<Mutex<()>>>,
    ) -> (String, mpsc::UnboundedReceiver<Received>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/v1/input",
            post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let gate = gate.clone();
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    tx.send((
                        h("x-agentmon-timestamp"),
                        h("x-agentmon-signature"),
                        body.to_vec(),
                    ))
                    .unwrap();
                    if let Some(g) = gate {
                        let _held = g.lock().await;
                    }
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), rx)
    }

    async fn post_interaction(base: &str, body: &Value, ts: i64) -> reqwest::Response {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let raw = serde_json::to_vec(body).unwrap();
        let headers = signed(&sk, ts, &raw);
        reqwest::Client::new()
            .post(format!("{base}/interactions"))
            .headers(headers)
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    /// Posts a signed interaction and returns Discord's JSON answer.
    async fn reply(base: &str, body: &Value, ts: i64) -> Value {
        post_interaction(base, body, ts).await.json().await.unwrap()
    }

    /// A fresh interaction id per call, as Discord gives every invocation.
    fn next_id() -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        format!(
            "interaction-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    fn input(channel_id: &str, text: &str) -> Value {
        json!({
            "id": next_id(),
            "type": 2,
            "application_id": "77",
            "token": "interaction-token-secret",
            "channel_id": channel_id,
            "member": {"user": {"id": "5", "username": "alice"}},
            "data": {"name": "input", "options": [{"name": "text", "type": 3, "value": text}]},
        })
    }

    async fn run_with_input(state: &AppState, input_url: &str) -> crate::runs::Provisioned {
        state
            .provision(
                NewRun {
                    task_id: "t".into(),
                    attempt: AttemptValue::Number(1),
                    short_id: "a".into(),
                    input_url: Some(input_url.into()),
                    heartbeats: false,
                },
                &owner(),
            )
            .await
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn ping_is_answered_and_bad_signatures_are_refused() {
        let (state, _) = fixture::state(fixture::settings());
        let base = fixture::serve(state).await;
        let now = crate::runs::now_unix();
        let resp = post_interaction(&base, &json!({"type": 1}), now).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 1}));
        let stale = post_interaction(&base, &json!({"type": 1}), now - 600).await;
        assert_eq!(stale.status(), 401);
        let unsigned = reqwest::Client::new()
            .post(format!("{base}/interactions"))
            .body(r#"{"type":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status(), 401);
        let v: Value = unsigned.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
    }

    #[tokio::test]
    async fn input_reaches_the_watcher_signed() {
        let (state, _) = fixture::state(fixture::settings());
        let (url, mut rx) = watcher(202, None).await;
        let run = run_with_input(&state, &url).await;
        let base = fixture::serve(state).await;
        let resp = post_interaction(
            &base,
            &input(&run.channel_id, "hello agent"),
            crate::runs::now_unix(),
        )
        .await;
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], 4);
        assert_eq!(v["data"]["flags"], 64);
        assert_eq!(v["data"]["content"], "forwarded");
        let (ts, sig, body) = rx.recv().await.unwrap();
        let secret = run.input_secret.expose().as_bytes();
        assert!(protocol::verify(secret, &ts, &body, &sig), "{sig}");
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got["run_id"], run.run_id.as_str());
        assert_eq!(got["user"], "alice");
        assert_eq!(got["text"], "hello agent");
        assert!(got["id"].as_str().unwrap().starts_with("interaction-"));
    }

    #[tokio::test]
    async fn an_interaction_delivered_to_two_replicas_reaches_the_watcher_once() {
        let (first, _) = fixture::state(fixture::settings());
        let (url, mut rx) = watcher(202, None).await;
        let run = run_with_input(&first, &url).await;
        // A second replica: its own process state over the same store.
        let second = AppState::new(
            first.settings().clone(),
            first.store().clone(),
            first.discord().clone(),
            crate::events::BridgeMetrics::unregistered().unwrap(),
            crate::relay::Relay::new(std::time::Duration::from_secs(5)).unwrap(),
            None,
        );
        let metrics = second.metrics().clone();
        let first_metrics = first.metrics().clone();
        let (a, b) = (fixture::serve(first).await, fixture::serve(second).await);
        let body = input(&run.channel_id, "once only");
        let now = crate::runs::now_unix();
        let (ra, rb) = tokio::join!(reply(&a, &body, now), reply(&b, &body, now));
        assert_eq!(ra["data"]["content"], "forwarded");
        assert_eq!(rb["data"]["content"], "forwarded");
        rx.recv().await.unwrap();
        assert!(rx.try_recv().is_err(), "the watcher got the input twice");
        // Exactly one of the two replicas saw the repeat (either may win).
        let seen = metrics.interactions_count("input", "duplicate")
            + first_metrics.interactions_count("input", "duplicate");
        assert_eq!(seen, 1);
    }

    #[tokio::test]
    async fn only_operators_reach_the_watcher() {
        let (state, _) = fixture::state(fixture::settings());
        let (url, mut rx) = watcher(202, None).await;
        let run = run_with_input(&state, &url).await;
        let metrics = state.metrics().clone();
        let base = fixture::serve(state).await;
        let now = crate::runs::now_unix();
        let as_member = |user: &str, roles: &[&str]| {
            let mut v = input(&run.channel_id, "rm -rf / please");
            v["member"] = json!({"user": {"id": user, "username": "mallory"}, "roles": roles});
            v
        };
        let v: Value = post_interaction(&base, &as_member("6", &["11"]), now)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"]["flags"], 64);
        let content = v["data"]["content"].as_str().unwrap();
        assert!(content.contains("only operators"), "{content}");
        assert_eq!(metrics.interactions_count("input", "forbidden"), 1);
        // By role, then by user id (the fixture's operators: role 10, user 5).
        for member in [as_member("6", &["11", "10"]), input(&run.channel_id, "hi")] {
            let v: Value = post_interaction(&base, &member, now)
                .await
                .json()
                .await
                .unwrap();
            assert_eq!(v["data"]["content"], "forwarded");
        }
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(r);
        }
        assert_eq!(got.len(), 2, "the refused input reached the watcher");
        // The operator by role sent the same text; the refused one did not arrive.
        let same_text = got
            .iter()
            .filter(|(_, _, body)| String::from_utf8_lossy(body).contains("rm -rf"))
            .count();
        assert_eq!(same_text, 1);
    }

    #[tokio::test]
    async fn a_stored_input_url_the_policy_refuses_is_never_called() {
        let (state, _) = fixture::state(fixture::settings());
        let (url, mut rx) = watcher(202, None).await;
        let run = run_with_input(&state, &url).await;
        // As an older version could have stored it.
        let mut stored = state
            .store()
            .get_run(run.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        stored.input_url = Some(format!("{url}/internal/admin/delete?confirm=yes&x="));
        state.store().update_run(stored).await.unwrap();
        let base = fixture::serve(state).await;
        let v = reply(&base, &input(&run.channel_id, "x"), crate::runs::now_unix()).await;
        let content = v["data"]["content"].as_str().unwrap();
        assert!(content.contains("INPUT_URL_ALLOW"), "{content}");
        assert!(rx.try_recv().is_err(), "the refused address was called");
    }

    #[tokio::test]
    async fn without_operators_all_input_is_refused_with_how_to_configure() {
        let mut settings = fixture::settings();
        settings.operators = crate::access::Operators::default();
        let (state, _) = fixture::state(settings);
        let (url, mut rx) = watcher(202, None).await;
        let run = run_with_input(&state, &url).await;
        let base = fixture::serve(state).await;
        let v = reply(&base, &input(&run.channel_id, "x"), crate::runs::now_unix()).await;
        let content = v["data"]["content"].as_str().unwrap();
        assert!(content.contains("OPERATOR_ROLE_IDS"), "{content}");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn watcher_answers_map_to_operator_messages() {
        for (status, text) in [(429, "agent busy, try again"), (503, "agent unavailable")] {
            let (state, _) = fixture::state(fixture::settings());
            let (url, _rx) = watcher(status, None).await;
            let run = run_with_input(&state, &url).await;
            let base = fixture::serve(state).await;
            let v = reply(&base, &input(&run.channel_id, "x"), crate::runs::now_unix()).await;
            assert_eq!(v["data"]["content"], text);
        }
        // Nobody listens: connection refused.
        let (state, _) = fixture::state(fixture::settings());
        let run = run_with_input(&state, "http://127.0.0.1:9").await;
        let base = fixture::serve(state.clone()).await;
        let now = crate::runs::now_unix();
        let v = reply(&base, &input(&run.channel_id, "x"), now).await;
        assert_eq!(v["data"]["content"], "agent unavailable");
        let v = reply(&base, &input("999999", "x"), now).await;
        assert_eq!(v["data"]["content"], "not a run channel");
        assert_eq!(v["data"]["flags"], 64);
        state.complete(&run.run_id, None, &owner()).await.unwrap();
        let v = reply(&base, &input(&run.channel_id, "x"), now).await;
        assert_eq!(v["data"]["content"], "run finished");
        let mut status = input(&run.channel_id, "");
        status["data"] = json!({"name": "status"});
        let v: Value = post_interaction(&base, &status, now)
            .await
            .json()
            .await
            .unwrap();
        let content = v["data"]["content"].as_str().unwrap();
        assert!(
            content.contains("completed") && content.contains(&run.run_id),
            "{content}"
        );
    }

    #[tokio::test]
    async fn a_slow_watcher_gets_a_deferred_reply_edited_later() {
        let mut settings = fixture::settings();
        settings.defer_after = Duration::from_millis(50);
        let (state, discord) = fixture::state(settings);
        let gate = Arc::new(Mutex::new(()));
        let held = gate.clone().lock_owned().await;
        let (url, mut rx) = watcher(202, Some(gate)).await;
        let run = run_with_input(&state, &url).await;
        let base = fixture::serve(state).await;
        let v = reply(&base, &input(&run.channel_id, "x"), crate::runs::now_unix()).await;
        assert_eq!(v, json!({"type": 5, "data": {"flags": 64}}));
        rx.recv().await.unwrap();
        assert!(discord.with(|s| s.edits.is_empty()));
        drop(held);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = discord.with(|s| s.edits.first().cloned()) {
                assert_eq!(e["content"], "forwarded");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no edit of the deferred reply"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
