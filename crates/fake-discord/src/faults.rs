//! Injected failures: what `POST /_admin/faults` queues and the server serves.
//!
//! Faults are consumed in the order they were queued; each request takes at most
//! one, from the first pending fault whose filters match it, and a fault is gone
//! once its `count` is used up. They apply to webhook executes unless `route`
//! says otherwise. A fault with `for_ms` instead hits every matching request
//! for that long from the first one it hits (an outage of a given length), then
//! gives way to the next.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The route name webhook executes match (besides their template).
pub const EXECUTE: &str = "execute";
/// The template of webhook executes.
pub const EXECUTE_ROUTE: &str = "POST /webhooks/{webhook_id}/{webhook_token}";

fn one() -> u32 {
    1
}

fn default_retry_after_ms() -> u64 {
    1000
}

fn default_hang_ms() -> u64 {
    600_000
}

/// What a fault does to the request it hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer `status` (e.g. 500, 502, 503) with `body` or a generic JSON error;
    /// the request is not processed.
    Status {
        status: u16,
        #[serde(default)]
        body: Option<serde_json::Value>,
    },
    /// Wait `delay_ms`, then process the request normally (the message is stored
    /// even if the client gave up: a slow Discord can still accept).
    Slow { delay_ms: u64 },
    /// Hold the request without answering (a Discord that accepts connections
    /// and never answers) until the faults are cleared (`DELETE
    /// /_admin/faults`: "Discord is back") or `max_ms` passes; then process it
    /// normally, so a client still waiting gets its answer. A client that gave
    /// up closed its connection, which drops the request unprocessed.
    Hang {
        #[serde(default = "default_hang_ms")]
        max_ms: u64,
    },
    /// Close the connection without any response (the hyper service returns an
    /// error, so nothing is written: clients see a reset / incomplete message).
    Reset,
    /// Answer `404 Unknown Webhook` although the webhook exists.
    NotFound,
    /// Answer 429 with `retry_after_ms` in `scope` (`user`, `shared` or `global`).
    RateLimitStorm {
        #[serde(default = "default_retry_after_ms")]
        retry_after_ms: u64,
        #[serde(default)]
        scope: StormScope,
    },
    /// Not queued: deletes webhook `id` at once (later executes answer 404).
    DeleteWebhook { id: String },
}

impl FaultKind {
    /// The stats label.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Status { .. } => "status",
            FaultKind::Slow { .. } => "slow",
            FaultKind::Hang { .. } => "hang",
            FaultKind::Reset => "reset",
            FaultKind::NotFound => "not_found",
            FaultKind::RateLimitStorm { .. } => "rate_limit_storm",
            FaultKind::DeleteWebhook { .. } => "delete_webhook",
        }
    }
}

/// The scope an injected 429 claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StormScope {
    #[default]
    User,
    Shared,
    Global,
}

/// One `POST /_admin/faults` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many requests it hits (default 1).
    #[serde(default = "one")]
    pub count: u32,
    /// Which requests: `"execute"` (default; webhook executes), a REST route
    /// template such as `"POST /guilds/{guild_id}/channels"`, or `"*"` for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Only executes of this webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    /// Hit every matching request for this many ms from the first hit
    /// (`count` is then ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// When a `for_ms` fault ends (set at its first hit).
    #[serde(skip)]
    pub active_until: Option<Instant>,
}

impl Fault {
    /// A fault of `kind` hitting the next `count` webhook executes.
    pub fn new(kind: FaultKind, count: u32) -> Self {
        Self {
            kind,
            count,
            route: None,
            webhook_id: None,
            for_ms: None,
            active_until: None,
        }
    }

    /// A fault of `kind` hitting every webhook execute for `duration` from the
    /// first one it hits.
    pub fn lasting(kind: FaultKind, duration: Duration) -> Self {
        Self {
            for_ms: Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
            ..Self::new(kind, 1)
        }
    }

    fn matches(&self, route: &str, webhook_id: Option<&str>) -> bool {
        let route_ok = match self.route.as_deref() {
            None | Some(EXECUTE) | Some("webhook") => route == EXECUTE_ROUTE,
            Some("*") => true,
            Some(r) => r == route,
        };
        let hook_ok = match (&self.webhook_id, webhook_id) {
            (None, _) => true,
            (Some(want), Some(got)) => want == got,
            (Some(_), None) => false,
        };
        route_ok && hook_ok
    }
}

/// Pending faults, first queued first served.
#[derive(Debug, Default)]
pub struct FaultQueue {
    pending: Vec<Fault>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        if fault.count > 0 || fault.for_ms.is_some() {
            self.pending.push(fault);
        }
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn pending(&self) -> &[Fault] {
        &self.pending
    }

    /// Takes one hit of the first fault matching the request at `now`.
    pub fn take(
        &mut self,
        route: &str,
        webhook_id: Option<&str>,
        now: Instant,
    ) -> Option<FaultKind> {
        // A lasting fault whose time is up is gone before anything is matched.
        self.pending
            .retain(|f| f.active_until.is_none_or(|until| now < until));
        let i = self
            .pending
            .iter()
            .position(|f| f.matches(route, webhook_id))?;
        let fault = &mut self.pending[i];
        let kind = fault.kind.clone();
        if let Some(ms) = fault.for_ms {
            fault
                .active_until
                .get_or_insert_with(|| now + Duration::from_millis(ms));
            return Some(kind);
        }
        fault.count -= 1;
        if fault.count == 0 {
            self.pending.remove(i);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_admin_json() {
        let f: Fault = serde_json::from_str(r#"{"kind":"status","status":503,"count":5}"#).unwrap();
        assert_eq!(
            f.kind,
            FaultKind::Status {
                status: 503,
                body: None
            }
        );
        assert_eq!(f.count, 5);
        let f: Fault =
            serde_json::from_str(r#"{"kind":"slow","delay_ms":2000,"count":3}"#).unwrap();
        assert_eq!(f.kind, FaultKind::Slow { delay_ms: 2000 });
        let f: Fault = serde_json::from_str(r#"{"kind":"hang","count":9}"#).unwrap();
        assert_eq!(f.kind, FaultKind::Hang { max_ms: 600_000 });
        let f: Fault = serde_json::from_str(r#"{"kind":"reset"}"#).unwrap();
        assert_eq!((f.kind, f.count), (FaultKind::Reset, 1));
        let f: Fault = serde_json::from_str(
            r#"{"kind":"rate_limit_storm","count":2,"retry_after_ms":250,"scope":"global"}"#,
        )
        .unwrap();
        assert_eq!(
            f.kind,
            FaultKind::RateLimitStorm {
                retry_after_ms: 250,
                scope: StormScope::Global
            }
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"explode"}"#).is_err());
        let f: Fault =
            serde_json::from_str(r#"{"kind":"status","status":503,"for_ms":60000}"#).unwrap();
        assert_eq!(f.for_ms, Some(60_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_fault_hits_everything_for_its_time_then_gives_way() {
        let mut q = FaultQueue::default();
        q.push(Fault::new(
            FaultKind::Status {
                status: 502,
                body: None,
            },
            1,
        ));
        q.push(Fault::lasting(
            FaultKind::Status {
                status: 503,
                body: None,
            },
            Duration::from_secs(60),
        ));
        q.push(Fault::new(FaultKind::Reset, 1));
        let status = |k: Option<FaultKind>| match k {
            Some(FaultKind::Status { status, .. }) => status,
            Some(FaultKind::Reset) => 1,
            _ => 0,
        };
        assert_eq!(status(q.take(EXECUTE_ROUTE, None, Instant::now())), 502);
        // Its clock starts at the first hit, not when it was queued.
        tokio::time::advance(Duration::from_secs(100)).await;
        for _ in 0..5 {
            assert_eq!(status(q.take(EXECUTE_ROUTE, None, Instant::now())), 503);
            tokio::time::advance(Duration::from_secs(11)).await;
        }
        assert_eq!(status(q.take(EXECUTE_ROUTE, None, Instant::now())), 503);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(status(q.take(EXECUTE_ROUTE, None, Instant::now())), 1);
        assert_eq!(q.take(EXECUTE_ROUTE, None, Instant::now()), None);
    }

    #[test]
    fn queue_serves_in_order_and_filters() {
        let now = Instant::now();
        let mut q = FaultQueue::default();
        q.push(Fault::new(FaultKind::Reset, 2));
        q.push(Fault::new(FaultKind::NotFound, 1));
        q.push(Fault {
            route: Some("POST /guilds/{guild_id}/channels".into()),
            ..Fault::new(
                FaultKind::Status {
                    status: 500,
                    body: None,
                },
                1,
            )
        });
        assert_eq!(q.take("GET /channels/{channel_id}", None, now), None);
        assert!(matches!(
            q.take("POST /guilds/{guild_id}/channels", None, now),
            Some(FaultKind::Status { status: 500, .. })
        ));
        assert_eq!(
            q.take(EXECUTE_ROUTE, Some("1"), now),
            Some(FaultKind::Reset)
        );
        assert_eq!(
            q.take(EXECUTE_ROUTE, Some("1"), now),
            Some(FaultKind::Reset)
        );
        assert_eq!(
            q.take(EXECUTE_ROUTE, Some("1"), now),
            Some(FaultKind::NotFound)
        );
        assert_eq!(q.take(EXECUTE_ROUTE, Some("1"), now), None);
        q.push(Fault {
            webhook_id: Some("7".into()),
            ..Fault::new(FaultKind::Reset, 1)
        });
        assert_eq!(q.take(EXECUTE_ROUTE, Some("1"), now), None);
        assert_eq!(
            q.take(EXECUTE_ROUTE, Some("7"), now),
            Some(FaultKind::Reset)
        );
    }
}
