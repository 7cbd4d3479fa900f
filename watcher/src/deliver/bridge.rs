//! The watcher's client of bot-bridge: provision the run's webhook, re-provision
//! it when Discord says it is gone, and report completion.
//!
//! bot-bridge being down must never stop streaming once a webhook is known, so
//! every call here is retried by the caller with backoff and none of them sits on
//! the delivery hot path except re-provisioning after a 401/404.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use discord::webhook_url::WebhookUrl;
use ops::Secret;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// bot-bridge could not be reached or timed out; retry later.
    #[error("bot-bridge unreachable: {0}")]
    Unreachable(String),
    /// bot-bridge answered with an error status.
    #[error("bot-bridge answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The answer was not what the contract says.
    #[error("bot-bridge answered an invalid body: {0}")]
    Invalid(String),
    /// `BRIDGE_TOKEN_FILE` could not be read (or is empty); retried, as the
    /// kubelet may be rotating it. The message names the file, never its
    /// content.
    #[error("cannot read the bot-bridge token: {0}")]
    Credential(String),
}

impl BridgeError {
    /// Whether retrying can help (not for 400/401/403: the config is wrong).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Invalid(_) | Self::Credential(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429 || *status == 404,
        }
    }

    /// bot-bridge already completed this run (409): its webhook is revoked and
    /// no retry can bring it back; a new run needs a new `ATTEMPT`.
    pub fn is_run_completed(&self) -> bool {
        matches!(self, Self::Status { status: 409, .. })
    }
}

/// How one `POST /v1/runs` ended: the closed label set of
/// `watcher_provision_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// A webhook was returned.
    Ok,
    /// No answer: connection refused or reset, DNS, timeout.
    Unreachable,
    /// 401/403: `BRIDGE_TOKEN` is wrong, or `BRIDGE_TOKEN_FILE` cannot be
    /// read.
    Unauthorized,
    /// 409: bot-bridge already completed this run.
    Conflict,
    /// 5xx or 429: bot-bridge is up but cannot serve now (its store, Discord).
    Unavailable,
    /// Another 4xx: the request (run identity) was refused.
    Rejected,
    /// An answer that breaks the contract (body, webhook URL).
    Invalid,
}

impl ProvisionOutcome {
    pub const ALL: [Self; 7] = [
        Self::Ok,
        Self::Unreachable,
        Self::Unauthorized,
        Self::Conflict,
        Self::Unavailable,
        Self::Rejected,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unreachable => "unreachable",
            Self::Unauthorized => "unauthorized",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Invalid => "invalid",
        }
    }

    /// Why there is no channel, in words for `/readyz`.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Ok => "provisioned",
            Self::Unreachable => "bot-bridge unreachable",
            Self::Unauthorized => {
                "bot-bridge refused BRIDGE_TOKEN (or BRIDGE_TOKEN_FILE is unreadable)"
            }
            Self::Conflict => "bot-bridge already completed this run",
            Self::Unavailable => "bot-bridge cannot provision now",
            Self::Rejected => "bot-bridge rejected the run request",
            Self::Invalid => "bot-bridge answered outside the contract",
        }
    }
}

impl BridgeError {
    /// The outcome label of this failure.
    pub fn outcome(&self) -> ProvisionOutcome {
        match self {
            Self::Unreachable(_) => ProvisionOutcome::Unreachable,
            Self::Invalid(_) => ProvisionOutcome::Invalid,
            Self::Credential(_) => ProvisionOutcome::Unauthorized,
            Self::Status { status, .. } => match status {
                401 | 403 => ProvisionOutcome::Unauthorized,
                409 => ProvisionOutcome::Conflict,
                429 | 500..=599 => ProvisionOutcome::Unavailable,
                _ => ProvisionOutcome::Rejected,
            },
        }
    }
}

/// Told the outcome of every provisioning call (at start and after Discord
/// said the webhook is gone).
pub trait ProvisionObserver: Send + Sync {
    fn provision_attempt(&self, outcome: ProvisionOutcome);
}

/// The run identity sent to bot-bridge.
#[derive(Debug, Clone, Serialize)]
pub struct RunRequest {
    pub task_id: String,
    pub attempt: String,
    pub short_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_url: Option<String>,
    /// The pod this watcher runs in, so bot-bridge can end the run when the
    /// pod dies without `complete` ([`PodIdentity::from_env`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
    /// This watcher heartbeats its run (`BRIDGE_HEARTBEAT_INTERVAL`), so
    /// bot-bridge counts provisioning as the first beat: a watcher killed
    /// before its first heartbeat is still finalised as silent.
    pub heartbeats: bool,
    /// Where the run token is kept (`STATE_DIR/run-token`, 0600), so a
    /// restarted watcher can still re-provision and complete its run.
    #[serde(skip)]
    pub run_token_file: Option<PathBuf>,
}

/// The watcher's pod, from the downward API env the chart's sidecar template
/// sets (`POD_NAMESPACE`, `POD_NAME`, `POD_UID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodIdentity {
    /// `Some` when all three variables are set and non-empty.
    pub fn from_env() -> Option<Self> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Some(Self {
            namespace: var("POD_NAMESPACE")?,
            name: var("POD_NAME")?,
            uid: var("POD_UID")?,
        })
    }
}

/// Header the run token travels in.
pub use protocol::headers::RUN_TOKEN as RUN_TOKEN_HEADER;

/// The run token: read from `file`, or generated (32 random bytes, hex) and
/// saved there owner-only before bot-bridge ever sees it, so an answer lost
/// on the way back never leaves the watcher without it.
fn load_or_create_run_token(file: &Path) -> std::io::Result<Secret<String>> {
    use std::io::Write;
    match std::fs::read_to_string(file) {
        Ok(t) if !t.trim().is_empty() => return Ok(Secret::new(t.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let token = hex::encode(bytes);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    Ok(Secret::new(token))
}

/// What provisioning gives the watcher.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub run_id: String,
    pub channel_id: String,
    pub webhook: WebhookUrl,
    pub input_secret: Option<Secret<String>>,
}

/// Largest token file read (projected tokens are about 1 KiB).
pub const MAX_TOKEN_FILE: u64 = 16 * 1024;

/// The bearer a watcher presents to bot-bridge.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeAuth {
    /// `BRIDGE_TOKEN`: the shared API token.
    Token(Secret<String>),
    /// `BRIDGE_TOKEN_FILE`: read on every call, so a token the kubelet
    /// rotates is always the current one.
    File(PathBuf),
}

impl BridgeAuth {
    /// The token to send now.
    pub async fn bearer(&self) -> Result<Secret<String>, BridgeError> {
        let path = match self {
            Self::Token(t) => return Ok(t.clone()),
            Self::File(p) => p,
        };
        let fail = |why: String| BridgeError::Credential(format!("{}: {why}", path.display()));
        let bytes = read_bounded(path, MAX_TOKEN_FILE)
            .await
            .map_err(|e| fail(e.kind().to_string()))?;
        if bytes.len() as u64 > MAX_TOKEN_FILE {
            return Err(fail(format!("larger than {MAX_TOKEN_FILE} bytes")));
        }
        let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(fail("empty".into()));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(fail("not a bearer token (non-printable characters)".into()));
        }
        Ok(Secret::new(token.to_owned()))
    }
}

/// Reads at most `max + 1` bytes of `path` (one more tells "too large").
async fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(path).await?;
    let mut out = Vec::new();
    file.take(max + 1).read_to_end(&mut out).await?;
    Ok(out)
}

/// How long one call to bot-bridge may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct BridgeClient {
    http: reqwest::Client,
    base: url::Url,
    token: BridgeAuth,
    run: RunRequest,
    /// Proves to bot-bridge that this watcher created the run.
    run_token: Option<Secret<String>>,
    observer: Option<Arc<dyn ProvisionObserver>>,
}

impl std::fmt::Debug for BridgeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl BridgeClient {
    pub fn new(base: url::Url, token: BridgeAuth, run: RunRequest) -> Result<Self, BridgeError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| BridgeError::Unreachable(e.without_url().to_string()))?;
        let run_token = match run.run_token_file.as_deref().map(load_or_create_run_token) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot keep the run token in STATE_DIR; a restart will not be able to re-provision this run");
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                Some(Secret::new(hex::encode(bytes)))
            }
            None => None,
        };
        Ok(Self {
            http,
            base,
            token,
            run,
            run_token,
            observer: None,
        })
    }

    /// Reports every provisioning call's outcome to `observer`.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn ProvisionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::Response, BridgeError> {
        let bearer = self.token.bearer().await?;
        let mut headers = http::HeaderMap::new();
        ops::trace::inject(&mut headers);
        if let Some(t) = &self.run_token {
            if let Ok(mut v) = http::HeaderValue::from_str(t.expose()) {
                v.set_sensitive(true);
                headers.insert(RUN_TOKEN_HEADER, v);
            }
        }
        let resp = self
            .http
            .post(self.url(path))
            .headers(headers)
            .bearer_auth(bearer.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| BridgeError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(BridgeError::Status { status, message })
    }

    /// `POST /v1/runs`: idempotent, so it also re-provisions a deleted webhook.
    /// The outcome is reported to the observer.
    pub async fn provision(&self) -> Result<Provisioned, BridgeError> {
        let result = self.provision_once().await;
        if let Some(observer) = &self.observer {
            observer.provision_attempt(match &result {
                Ok(_) => ProvisionOutcome::Ok,
                Err(e) => e.outcome(),
            });
        }
        result
    }

    async fn provision_once(&self) -> Result<Provisioned, BridgeError> {
        let resp = self.post("/v1/runs", &self.run).await?;
        let body: protocol::RunCreated = resp
            .json()
            .await
            .map_err(|e| BridgeError::Invalid(e.without_url().to_string()))?;
        let webhook = WebhookUrl::parse(body.webhook_url.expose())
            .map_err(|e| BridgeError::Invalid(format!("webhook_url: {e}")))?;
        Ok(Provisioned {
            run_id: body.run_id,
            channel_id: body.channel_id,
            webhook,
            input_secret: body.input_secret.filter(|s| !s.expose().is_empty()),
        })
    }

    /// `POST /v1/runs/{run_id}/complete` with the session summary.
    pub async fn complete(
        &self,
        run_id: &str,
        summary: &serde_json::Value,
    ) -> Result<(), BridgeError> {
        let path = format!("/v1/runs/{}/complete", urlencode(run_id));
        self.post(&path, &serde_json::json!({ "summary": summary }))
            .await?;
        Ok(())
    }
}

/// At most this many messages per hand-off request (the contract's bound).
pub const HANDOFF_MAX_MESSAGES: usize = 1000;

/// At most about this many bytes per hand-off request (the contract allows
/// 16 MiB; the rest is room for the envelope).
pub const HANDOFF_MAX_BYTES: usize = 15 << 20;

/// One message of a hand-off: its place in the channel and the webhook body.
#[derive(Debug, Serialize)]
struct HandoffMessage<'a> {
    seq: u64,
    payload: &'a discord::embed::WebhookMessage,
}

#[derive(Debug, Serialize)]
struct HandoffRequest<'a> {
    messages: Vec<HandoffMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    complete: Option<HandoffComplete<'a>>,
    /// When the channel accepted the messages that still hold its window
    /// (unix milliseconds, oldest first), with the first request only.
    #[serde(skip_serializing_if = "<[u64]>::is_empty")]
    channel_sends_unix_ms: &'a [u64],
}

#[derive(Debug, Serialize)]
struct HandoffComplete<'a> {
    summary: &'a serde_json::Value,
}

/// bot-bridge's answer to a hand-off: what it stored now, what it had.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HandoffAnswer {
    pub accepted: u64,
    pub duplicates: u64,
    pub pending: u64,
}

impl BridgeClient {
    /// `POST /v1/runs/{run_id}/handoff`: the messages (in `seq` order) in
    /// requests of at most [`HANDOFF_MAX_MESSAGES`] and about
    /// [`HANDOFF_MAX_BYTES`], `complete` with the last one. Each request is
    /// idempotent (bot-bridge drops a `seq` it has), so a retry after a lost
    /// answer adds nothing. Answers summed. `channel_sends`: how long ago the
    /// channel accepted the messages that still hold its window, so
    /// bot-bridge continues the channel's pace.
    pub async fn handoff(
        &self,
        run_id: &str,
        messages: &[(u64, discord::embed::WebhookMessage)],
        summary: &serde_json::Value,
        channel_sends: &[Duration],
    ) -> Result<HandoffAnswer, BridgeError> {
        let path = format!("/v1/runs/{}/handoff", urlencode(run_id));
        let now = std::time::SystemTime::now();
        let sends: Vec<u64> = channel_sends
            .iter()
            .filter_map(|age| now.checked_sub(*age))
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect();
        let mut total = HandoffAnswer::default();
        let chunks = handoff_chunks(messages);
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let body = HandoffRequest {
                messages: chunk
                    .iter()
                    .map(|(seq, payload)| HandoffMessage { seq: *seq, payload })
                    .collect(),
                complete: (i == last).then_some(HandoffComplete { summary }),
                channel_sends_unix_ms: if i == 0 { &sends } else { &[] },
            };
            let resp = match self.post(&path, &body).await {
                // A bot-bridge older than `channel_sends_unix_ms` refuses the
                // field (it denies unknown ones): without it, it still takes
                // the messages, only paced from a window of its own.
                Err(BridgeError::Status { status: 400, .. })
                    if !body.channel_sends_unix_ms.is_empty() =>
                {
                    let plain = HandoffRequest {
                        channel_sends_unix_ms: &[],
                        ..body
                    };
                    self.post(&path, &plain).await?
                }
                other => other?,
            };
            let answer: HandoffAnswer = resp
                .json()
                .await
                .map_err(|e| BridgeError::Invalid(e.without_url().to_string()))?;
            total.accepted += answer.accepted;
            total.duplicates += answer.duplicates;
            total.pending = answer.pending;
        }
        Ok(total)
    }
}

/// `messages` cut into requests within the contract's bounds, in order;
/// always at least one (possibly empty: `complete` alone).
fn handoff_chunks(
    messages: &[(u64, discord::embed::WebhookMessage)],
) -> Vec<&[(u64, discord::embed::WebhookMessage)]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, (_, payload)) in messages.iter().enumerate() {
        let size = serde_json::to_vec(payload).map_or(0, |v| v.len()) + 32;
        if i > start && (i - start >= HANDOFF_MAX_MESSAGES || bytes + size > HANDOFF_MAX_BYTES) {
            chunks.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    chunks.push(&messages[start..]);
    chunks
}

/// Heartbeats `run_id` every `interval` until `stop`, so bot-bridge does not
/// finalise it as silent. Failures are logged at debug level only: the next
/// beat retries, and a watcher that cannot reach bot-bridge for the whole
/// silence timeout is, to bot-bridge, indistinguishable from a dead one.
pub fn spawn_heartbeat(
    bridge: BridgeClient,
    run_id: String,
    interval: Duration,
    stop: ops::shutdown::Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = format!("/v1/runs/{}/heartbeat", urlencode(&run_id));
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.wait() => return,
                _ = timer.tick() => {}
            }
            match bridge.post(&path, &serde_json::json!({})).await {
                Ok(_) => tracing::debug!(run_id = %run_id, "heartbeat sent"),
                // The run is over (completed or finalised): nothing to keep alive.
                Err(e) if e.is_run_completed() => return,
                Err(e) => tracing::debug!(run_id = %run_id, error = %e, "heartbeat failed"),
            }
        }
    })
}

fn urlencode(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~') {
                c.to_string()
            } else {
                let mut buf = [0u8; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_token_file_is_read_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let auth = BridgeAuth::File(path.clone());
        // Missing: a provisioning failure that names the file, not a panic.
        let e = auth.bearer().await.unwrap_err();
        assert_eq!(e.outcome(), ProvisionOutcome::Unauthorized);
        assert!(e.is_transient());
        assert!(e.to_string().contains("token"), "{e}");
        std::fs::write(&path, "first-SeCrEt\n").unwrap();
        assert_eq!(auth.bearer().await.unwrap().expose(), "first-SeCrEt");
        // The kubelet rotated it: the next call sends the new one.
        std::fs::write(&path, "second-SeCrEt").unwrap();
        assert_eq!(auth.bearer().await.unwrap().expose(), "second-SeCrEt");
        for bad in ["", " \n", "two words"] {
            std::fs::write(&path, bad).unwrap();
            let e = auth.bearer().await.unwrap_err().to_string();
            assert!(!e.contains("words"), "content leaked: {e}");
        }
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE as usize + 1]).unwrap();
        assert!(auth.bearer().await.is_err(), "an oversized file is refused");
        let shown = format!("{:?}", BridgeAuth::Token(Secret::new("tok-SeCrEt".into())));
        assert!(!shown.contains("SeCrEt"), "{shown}");
    }

    #[test]
    fn the_pod_identity_travels_in_the_run_request_only_when_known() {
        let mut run = RunRequest {
            task_id: "t".into(),
            attempt: "1".into(),
            short_id: "s".into(),
            input_url: None,
            heartbeats: true,
            pod: None,
            run_token_file: None,
        };
        let v = serde_json::to_value(&run).unwrap();
        assert!(v.get("pod").is_none(), "{v}");
        run.pod = Some(PodIdentity {
            namespace: "agents".into(),
            name: "agent-1".into(),
            uid: "u-1".into(),
        });
        let v = serde_json::to_value(&run).unwrap();
        assert_eq!(
            v["pod"],
            serde_json::json!({"namespace": "agents", "name": "agent-1", "uid": "u-1"})
        );
    }

    /// The request is the contract's `NewRun` plus `pod`, which bot-bridge
    /// takes out before reading the rest with unknown fields refused.
    #[test]
    fn the_run_request_is_the_contracts_new_run() {
        let run = RunRequest {
            task_id: "t".into(),
            attempt: "2".into(),
            short_id: "s".into(),
            input_url: Some("http://10.0.0.7:8790".into()),
            heartbeats: true,
            pod: Some(PodIdentity {
                namespace: "agents".into(),
                name: "agent-1".into(),
                uid: "u-1".into(),
            }),
            run_token_file: Some("/state/run-token".into()),
        };
        let mut v = serde_json::to_value(&run).unwrap();
        v.as_object_mut().unwrap().remove("pod");
        let new_run: protocol::NewRun = serde_json::from_value(v).unwrap();
        assert_eq!(
            new_run,
            protocol::NewRun {
                task_id: "t".into(),
                attempt: protocol::AttemptValue::Text("2".into()),
                short_id: "s".into(),
                input_url: Some("http://10.0.0.7:8790".into()),
                heartbeats: true,
            }
        );
    }

    #[test]
    fn the_run_token_is_kept_owner_only_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state").join("run-token");
        let first = load_or_create_run_token(&file).unwrap();
        assert_eq!(first.expose().len(), 64);
        let again = load_or_create_run_token(&file).unwrap();
        assert_eq!(first.expose(), again.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn failures_map_to_the_closed_outcome_set() {
        let status = |status| BridgeError::Status {
            status,
            message: String::new(),
        };
        assert_eq!(
            BridgeError::Unreachable("refused".into()).outcome(),
            ProvisionOutcome::Unreachable
        );
        assert_eq!(status(401).outcome(), ProvisionOutcome::Unauthorized);
        assert_eq!(status(403).outcome(), ProvisionOutcome::Unauthorized);
        assert_eq!(status(409).outcome(), ProvisionOutcome::Conflict);
        assert_eq!(status(503).outcome(), ProvisionOutcome::Unavailable);
        assert_eq!(status(429).outcome(), ProvisionOutcome::Unavailable);
        assert_eq!(status(400).outcome(), ProvisionOutcome::Rejected);
        assert_eq!(
            BridgeError::Invalid("x".into()).outcome(),
            ProvisionOutcome::Invalid
        );
        let labels: std::collections::BTreeSet<_> =
            ProvisionOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels.len(), ProvisionOutcome::ALL.len());
    }

    /// A bot-bridge that implements the hand-off contract (HANDOFF.md):
    /// owner auth, at most 1000 messages per request, seqs strictly
    /// increasing, a seq it has is a duplicate, 202 with the counts.
    mod handoff_server {
        use std::collections::BTreeMap;
        use std::sync::{Arc, Mutex};

        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::Json;
        use serde_json::{json, Value};

        #[derive(Default)]
        pub struct Stored {
            pub messages: BTreeMap<u64, Value>,
            pub requests: usize,
            pub completes: Vec<Value>,
            /// Each request's `channel_sends_unix_ms` (`Null` when absent).
            pub sends: Vec<Value>,
        }

        pub type Shared = Arc<Mutex<Stored>>;

        async fn handoff(
            State(stored): State<Shared>,
            Path(run): Path<String>,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            if headers.get("authorization").and_then(|v| v.to_str().ok())
                != Some("Bearer api-token")
            {
                return (StatusCode::UNAUTHORIZED, Json(json!({})));
            }
            if run != "run-1" && run != "run-old" {
                return (StatusCode::NOT_FOUND, Json(json!({})));
            }
            // A bot-bridge from before `channel_sends_unix_ms`.
            if run == "run-old" && body.get("channel_sends_unix_ms").is_some() {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": {"message": "unknown field"}})),
                );
            }
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            if messages.len() > 1000 {
                return (StatusCode::PAYLOAD_TOO_LARGE, Json(json!({})));
            }
            let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
            if seqs.len() != messages.len() || seqs.windows(2).any(|w| w[0] >= w[1]) {
                return (StatusCode::BAD_REQUEST, Json(json!({"error": "seq"})));
            }
            let mut s = stored.lock().unwrap();
            s.requests += 1;
            let (mut accepted, mut duplicates) = (0, 0);
            for m in messages {
                let seq = m["seq"].as_u64().unwrap_or_default();
                match s.messages.entry(seq) {
                    std::collections::btree_map::Entry::Occupied(_) => duplicates += 1,
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(m["payload"].clone());
                        accepted += 1;
                    }
                }
            }
            if let Some(c) = body.get("complete") {
                s.completes.push(c.clone());
            }
            s.sends.push(body["channel_sends_unix_ms"].clone());
            let pending = s.messages.len();
            (
                StatusCode::ACCEPTED,
                Json(json!({"accepted": accepted, "duplicates": duplicates, "pending": pending})),
            )
        }

        pub async fn start() -> (String, Shared) {
            let stored = Shared::default();
            let app = axum::Router::new()
                .route("/v1/runs/{run}/handoff", axum::routing::post(handoff))
                .with_state(stored.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            (format!("http://{addr}/"), stored)
        }
    }

    fn run_request() -> RunRequest {
        RunRequest {
            task_id: "t".into(),
            attempt: "1".into(),
            short_id: "s".into(),
            input_url: None,
            heartbeats: true,
            pod: None,
            run_token_file: None,
        }
    }

    /// issue 18: a backlog larger than one request goes in several, in seq
    /// order, `complete` with the last only; a repeat adds nothing.
    #[tokio::test]
    async fn a_handoff_goes_in_bounded_idempotent_requests_with_complete_last() {
        let (base, stored) = handoff_server::start().await;
        let client = BridgeClient::new(
            url::Url::parse(&base).unwrap(),
            BridgeAuth::Token(Secret::new("api-token".into())),
            run_request(),
        )
        .unwrap();
        let messages: Vec<(u64, discord::embed::WebhookMessage)> = (100..2600)
            .map(|seq| {
                (
                    seq,
                    discord::embed::WebhookMessage {
                        content: Some(format!("m{seq}")),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let summary = serde_json::json!({"events": 2500});
        let ages = [Duration::from_secs(2), Duration::from_millis(500)];
        let answer = client
            .handoff("run-1", &messages, &summary, &ages)
            .await
            .unwrap();
        assert_eq!((answer.accepted, answer.duplicates), (2500, 0));
        {
            let s = stored.lock().unwrap();
            assert_eq!(s.requests, 3, "at most 1000 messages per request");
            // The channel's recent sends, as times oldest first, go once.
            let sends: Vec<u64> = s.sends[0]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .collect();
            assert_eq!(sends.len(), 2);
            assert_eq!(sends[1] - sends[0], 1500);
            assert!(
                s.sends[1..].iter().all(serde_json::Value::is_null),
                "{:?}",
                s.sends
            );
            assert_eq!(s.completes, [serde_json::json!({"summary": summary})]);
            assert_eq!(s.messages[&100]["content"], "m100");
            assert_eq!(
                s.messages.keys().copied().collect::<Vec<_>>(),
                (100..2600).collect::<Vec<_>>()
            );
        }
        let again = client
            .handoff("run-1", &messages, &summary, &[])
            .await
            .unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 2500), "idempotent");
        // Only `complete`: one request with no messages.
        let alone = client.handoff("run-1", &[], &summary, &[]).await.unwrap();
        assert_eq!(alone.accepted, 0);
        // An older bot-bridge refuses the pacing field: the hand-off goes
        // again without it.
        let old = client
            .handoff("run-old", &messages[..1], &summary, &ages)
            .await
            .unwrap();
        assert_eq!(old.duplicates, 1);
        let e = client
            .handoff("run-2", &messages[..1], &summary, &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
    }

    #[test]
    fn handoff_requests_respect_the_byte_bound() {
        let big = discord::embed::WebhookMessage {
            content: Some("x".repeat(4 << 20)),
            ..Default::default()
        };
        let messages: Vec<_> = (0..8).map(|i| (i, big.clone())).collect();
        let chunks = handoff_chunks(&messages);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 8);
        assert_eq!(handoff_chunks(&[]).len(), 1, "complete alone");
    }
}
