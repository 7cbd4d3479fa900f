//! The contract between the watcher and bot-bridge, written once: the bodies of
//! `POST /v1/runs` and `POST /v1/input`, the header names, and how relayed
//! input is signed and how fresh its signature must be (DESIGN.md §3).
//!
//! Both services and their tests use these types and functions, so a change to
//! the wire format is a change here, pinned by the JSON round-trip tests below,
//! not something only the end-to-end tests would notice.

use std::time::Duration;

use hmac::{Hmac, Mac};
use ops::Secret;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Header names, lower case as `http` spells them.
pub mod headers {
    /// The per-run token a watcher presents on calls about its own run.
    pub const RUN_TOKEN: &str = "x-agentmon-run-token";
    /// Unix seconds at which a relayed input was signed.
    pub const TIMESTAMP: &str = "x-agentmon-timestamp";
    /// `sha256=<hex>` over `timestamp + "." + body` (see [`super::sign`]).
    pub const SIGNATURE: &str = "x-agentmon-signature";
}

/// What the watcher sends to `POST /v1/runs`. The watcher also sends `pod`
/// (its pod's identity), which bot-bridge reads apart from the run's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRun {
    pub task_id: String,
    /// A number or a string; both are accepted.
    pub attempt: AttemptValue,
    pub short_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_url: Option<String>,
    /// The watcher will heartbeat this run: provisioning counts as its first
    /// beat, so a watcher killed before its first heartbeat is still
    /// finalised as silent (a watcher that never heartbeats leaves it unset).
    #[serde(default)]
    pub heartbeats: bool,
}

/// `attempt` as JSON number or string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttemptValue {
    Number(u64),
    Text(String),
}

impl AttemptValue {
    /// The attempt as the run's key holds it: a number's digits, a string trimmed.
    pub fn as_string(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s.trim().to_owned(),
        }
    }
}

/// What `POST /v1/runs` answers: everything the watcher needs to post and to
/// verify relayed input. The only place secrets leave bot-bridge, so it is
/// written by [`to_json`](Self::to_json), which exposes them on purpose
/// (serialising a `Secret` writes `[redacted]`).
#[derive(Debug, Clone, Deserialize)]
pub struct RunCreated {
    pub run_id: String,
    pub channel_id: String,
    pub webhook_url: Secret<String>,
    /// The key relayed input is signed with (`None` from a bot-bridge that
    /// relays no input).
    #[serde(default)]
    pub input_secret: Option<Secret<String>>,
    /// The run token, when bot-bridge generated it in this call (creation
    /// without a proposed token); returned once, stored only as a hash.
    #[serde(default)]
    pub run_token: Option<Secret<String>>,
}

impl RunCreated {
    /// The response body, secrets exposed; `run_token` only when there is one.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "run_id": self.run_id,
            "channel_id": self.channel_id,
            "webhook_url": self.webhook_url.expose(),
            "input_secret": self.input_secret.as_ref().map(Secret::expose),
        });
        if let Some(token) = &self.run_token {
            body["run_token"] = serde_json::json!(token.expose());
        }
        body
    }
}

/// One operator input: the body of `POST {input_url}/v1/input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    pub run_id: String,
    pub user: String,
    pub text: String,
    /// The interaction id; the watcher refuses a replayed one.
    pub id: String,
}

/// How old (or how far in the future) a signed timestamp may be.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(300);

/// The [`headers::SIGNATURE`] value for `body` signed at `timestamp` (unix
/// seconds as text): `sha256=<hex hmac-sha256(secret, timestamp + "." + body)>`,
/// the key being the bytes of the run's `input_secret`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` is [`sign`]'s value for this input, compared in
/// constant time.
pub fn verify(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(sig) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&sig).is_ok()
}

/// Whether `timestamp` (unix seconds as text) is within [`FRESHNESS_WINDOW`]
/// of `now` (unix seconds), either way.
pub fn is_fresh(timestamp: &str, now: u64) -> bool {
    timestamp
        .parse::<u64>()
        .is_ok_and(|t| t.abs_diff(now) <= FRESHNESS_WINDOW.as_secs())
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: `new_from_slice` cannot fail, and the
    // fallback (an empty key) is never reached.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// Serialises `value`, checks it is exactly `expected`, and that it reads back.
    fn pinned<T>(value: &T, expected: serde_json::Value) -> T
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let json = serde_json::to_value(value).unwrap();
        assert_eq!(json, expected);
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn new_run_json_is_pinned() {
        let run = NewRun {
            task_id: "TASK-1".into(),
            attempt: AttemptValue::Text("2".into()),
            short_id: "abc".into(),
            input_url: Some("http://10.0.0.7:8790".into()),
            heartbeats: true,
        };
        let expected = json!({
            "task_id": "TASK-1", "attempt": "2", "short_id": "abc",
            "input_url": "http://10.0.0.7:8790", "heartbeats": true
        });
        assert_eq!(pinned(&run, expected), run);
        // What older watchers send: a numeric attempt, no input URL, no heartbeats.
        let old: NewRun =
            serde_json::from_value(json!({"task_id": "t", "attempt": 3, "short_id": "s"})).unwrap();
        assert_eq!(old.attempt.as_string(), "3");
        assert!(!old.heartbeats && old.input_url.is_none());
        // Unknown fields are refused, so a typo is an error, not a default.
        let typo = json!({"task_id": "t", "attempt": 1, "short_id": "s", "heartbeat": true});
        assert!(serde_json::from_value::<NewRun>(typo).is_err());
    }

    #[test]
    fn run_created_json_is_pinned() {
        let created = RunCreated {
            run_id: "r1".into(),
            channel_id: "c1".into(),
            webhook_url: Secret::new("https://discord.com/api/webhooks/1/tok".into()),
            input_secret: Some(Secret::new("in-secret".into())),
            run_token: None,
        };
        let body = created.to_json();
        assert_eq!(
            body,
            json!({
                "run_id": "r1", "channel_id": "c1",
                "webhook_url": "https://discord.com/api/webhooks/1/tok",
                "input_secret": "in-secret"
            })
        );
        let back: RunCreated = serde_json::from_value(body).unwrap();
        assert!(back.run_token.is_none());
        assert_eq!(back.webhook_url.expose(), created.webhook_url.expose());
        assert_eq!(
            back.input_secret.map(|s| s.expose().clone()),
            Some("in-secret".into())
        );
        // The secrets stay out of Debug output.
        let debug = format!("{created:?}");
        assert!(!debug.contains("in-secret") && !debug.contains("webhooks/1"));
    }

    #[test]
    fn input_request_json_is_pinned() {
        let input = InputRequest {
            run_id: "r1".into(),
            user: "alice".into(),
            text: "stop".into(),
            id: "i-1".into(),
        };
        let expected = json!({"run_id": "r1", "user": "alice", "text": "stop", "id": "i-1"});
        assert_eq!(pinned(&input, expected), input);
    }

    #[test]
    fn signature_matches_a_reference_hmac_and_verifies() {
        // Reference: python3 -c 'import hmac,hashlib;
        //   print(hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest())'
        let sig = sign(b"key", "1700000000", b"{}");
        assert_eq!(
            sig,
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert!(verify(b"key", "1700000000", b"{}", &sig));
        assert!(!verify(b"key", "1700000001", b"{}", &sig));
        assert!(!verify(b"other", "1700000000", b"{}", &sig));
        assert!(!verify(b"key", "1700000000", b"{ }", &sig));
        assert!(!verify(b"key", "1700000000", b"{}", "sha256=zz"));
        assert!(!verify(
            b"key",
            "1700000000",
            b"{}",
            sig.trim_start_matches("sha256=")
        ));
    }

    #[test]
    fn freshness_is_five_minutes_either_way() {
        assert!(is_fresh("1000", 1300));
        assert!(is_fresh("1300", 1000));
        assert!(!is_fresh("1000", 1301));
        assert!(!is_fresh("1301", 1000));
        assert!(!is_fresh("", 1000));
        assert!(!is_fresh("-5", 1000));
    }
}
