//! Component health, heartbeats and the JSON bodies of `/livez`, `/readyz`, `/healthz`.
//!
//! Liveness and readiness answer different questions: liveness fails only when an
//! internal loop stopped beating (a restart helps), readiness fails when a
//! dependency the service needs is unavailable (a restart does not help). So
//! components report status, and loops report heartbeats, separately.
//!
//! A loop that waits on a dependency (a request with its timeout, a backoff
//! sleep, a rate-limit window) is not stuck: it declares the wait's bound with
//! [`Heartbeat::waiting`] and counts as alive until that bound has passed. Only
//! a loop that outlives every bound it declared fails `/livez`, so an outage of
//! Discord or bot-bridge never restarts the process; it shows in readiness and
//! metrics instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A component's state as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Degraded,
    Failed,
}

#[derive(Debug, Clone)]
struct ComponentState {
    status: Status,
    detail: String,
    since: SystemTime,
    readiness: bool,
    data: Value,
}

#[derive(Debug)]
struct HeartbeatState {
    last: Instant,
    max_silence: Duration,
    /// The end of the bounded wait the loop declared, if it is in one.
    waiting_until: Option<Instant>,
}

impl HeartbeatState {
    /// Whether the loop has been silent for longer than allowed: beyond its
    /// last beat and beyond the end of any wait it declared.
    fn stuck(&self, now: Instant) -> bool {
        let reference = match self.waiting_until {
            Some(until) if until > self.last => until,
            _ => self.last,
        };
        now > reference && now.duration_since(reference) > self.max_silence
    }
}

#[derive(Debug)]
struct Inner {
    version: String,
    started: Instant,
    components: Mutex<BTreeMap<String, ComponentState>>,
    heartbeats: Mutex<BTreeMap<String, HeartbeatState>>,
}

/// The health registry of one process. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the maps inconsistent (every
    // update is a single insert), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl Health {
    pub fn new(version: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                version: version.to_owned(),
                started: Instant::now(),
                components: Mutex::new(BTreeMap::new()),
                heartbeats: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Registers a component. A `readiness` component in [`Status::Failed`] makes
    /// `/readyz` answer 503; other components only show in `/healthz`.
    /// The component starts in `initial` with `detail`.
    pub fn component(
        &self,
        name: &str,
        readiness: bool,
        initial: Status,
        detail: &str,
    ) -> Component {
        lock(&self.inner.components).insert(
            name.to_owned(),
            ComponentState {
                status: initial,
                detail: detail.to_owned(),
                since: SystemTime::now(),
                readiness,
                data: Value::Null,
            },
        );
        Component {
            health: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Registers a loop that must call [`Heartbeat::beat`] at least every
    /// `max_silence`; if it does not, `/livez` answers 503.
    pub fn heartbeat(&self, name: &str, max_silence: Duration) -> Heartbeat {
        lock(&self.inner.heartbeats).insert(
            name.to_owned(),
            HeartbeatState {
                last: Instant::now(),
                max_silence,
                waiting_until: None,
            },
        );
        Heartbeat {
            health: self.clone(),
            name: name.to_owned(),
        }
    }

    /// `(alive, body)` for `/livez`.
    pub fn live(&self) -> (bool, Value) {
        let now = Instant::now();
        let stuck: Vec<String> = lock(&self.inner.heartbeats)
            .iter()
            .filter(|(_, h)| h.stuck(now))
            .map(|(n, _)| n.clone())
            .collect();
        if stuck.is_empty() {
            (true, json!({"status": "ok"}))
        } else {
            (false, json!({"status": "stuck", "stuck": stuck}))
        }
    }

    fn checks(&self, only_readiness: bool) -> (Vec<Status>, serde_json::Map<String, Value>) {
        let components = lock(&self.inner.components);
        let mut statuses = Vec::new();
        let mut checks = serde_json::Map::new();
        for (name, c) in components
            .iter()
            .filter(|(_, c)| c.readiness || !only_readiness)
        {
            statuses.push(c.status);
            let mut body = json!({
                "status": c.status,
                "detail": c.detail,
                "since": rfc3339(c.since),
            });
            if !c.data.is_null() && !only_readiness {
                body["data"] = c.data.clone();
            }
            checks.insert(name.clone(), body);
        }
        (statuses, checks)
    }

    /// `(ready, body)` for `/readyz`: ready unless a readiness component failed.
    pub fn ready(&self) -> (bool, Value) {
        let (statuses, checks) = self.checks(true);
        let ready = !statuses.contains(&Status::Failed);
        let status = if ready { "ready" } else { "not_ready" };
        (ready, json!({"status": status, "checks": checks}))
    }

    /// The `/healthz` body: always served, summarising every component.
    pub fn report(&self) -> Value {
        let (statuses, checks) = self.checks(false);
        let status = if statuses.contains(&Status::Failed) {
            "unhealthy"
        } else if statuses.contains(&Status::Degraded) {
            "degraded"
        } else {
            "healthy"
        };
        json!({
            "status": status,
            "version": self.inner.version,
            "uptime_seconds": self.inner.started.elapsed().as_secs(),
            "checks": checks,
        })
    }
}

/// A handle to one registered component.
#[derive(Debug, Clone)]
pub struct Component {
    health: Health,
    name: String,
}

impl Component {
    /// Sets status and detail; `since` moves only when the status changes, so it
    /// tells how long a failure has lasted.
    pub fn set(&self, status: Status, detail: impl Into<String>) {
        let mut components = lock(&self.health.inner.components);
        if let Some(c) = components.get_mut(&self.name) {
            if c.status != status {
                c.since = SystemTime::now();
            }
            c.status = status;
            c.detail = detail.into();
        }
    }

    pub fn ok(&self, detail: impl Into<String>) {
        self.set(Status::Ok, detail);
    }

    pub fn degraded(&self, detail: impl Into<String>) {
        self.set(Status::Degraded, detail);
    }

    pub fn failed(&self, detail: impl Into<String>) {
        self.set(Status::Failed, detail);
    }

    /// Extra structured data shown in `/healthz` (queue depth, last delivery, …).
    pub fn set_data(&self, data: Value) {
        if let Some(c) = lock(&self.health.inner.components).get_mut(&self.name) {
            c.data = data;
        }
    }

    pub fn status(&self) -> Option<Status> {
        lock(&self.health.inner.components)
            .get(&self.name)
            .map(|c| c.status)
    }
}

/// A handle a loop uses to prove it is not stuck.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    health: Health,
    name: String,
}

impl Heartbeat {
    pub fn beat(&self) {
        if let Some(h) = lock(&self.health.inner.heartbeats).get_mut(&self.name) {
            h.last = Instant::now();
        }
    }

    /// Declares that the loop now waits for at most `bound` (a request and its
    /// timeout, a backoff sleep, a rate-limit window, a disk write): it counts
    /// as alive until `bound` has passed (plus its usual silence), however long
    /// the dependency takes to answer within it. The wait ends when the guard
    /// drops, which beats. Waits nest: an inner wait ends by restoring the
    /// outer one's bound.
    pub fn waiting(&self, bound: Duration) -> Waiting {
        let until = Instant::now() + bound;
        let previous = {
            let mut beats = lock(&self.health.inner.heartbeats);
            beats.get_mut(&self.name).and_then(|h| {
                h.last = Instant::now();
                let previous = h.waiting_until;
                h.waiting_until = Some(previous.map_or(until, |p| p.max(until)));
                previous
            })
        };
        Waiting {
            heartbeat: self.clone(),
            previous,
        }
    }

    /// Awaits `fut`, a wait bounded by `bound` (see [`Heartbeat::waiting`]).
    pub async fn within<F: std::future::Future>(&self, bound: Duration, fut: F) -> F::Output {
        let _waiting = self.waiting(bound);
        fut.await
    }
}

/// A bounded wait declared with [`Heartbeat::waiting`]; dropping it ends the
/// wait and beats.
#[derive(Debug)]
#[must_use = "the wait ends when this guard drops"]
pub struct Waiting {
    heartbeat: Heartbeat,
    previous: Option<Instant>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let name = &self.heartbeat.name;
        if let Some(h) = lock(&self.heartbeat.health.inner.heartbeats).get_mut(name) {
            h.last = Instant::now();
            h.waiting_until = self.previous;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_only_for_readiness_components() {
        let h = Health::new("1.0");
        let sink = h.component("sink", true, Status::Ok, "idle");
        let info = h.component("dlq", false, Status::Ok, "empty");
        assert!(h.ready().0);
        info.failed("disk full");
        assert!(
            h.ready().0,
            "a non-readiness component must not flip readiness"
        );
        assert_eq!(h.report()["status"], "unhealthy");
        sink.failed("discord down");
        let (ready, body) = h.ready();
        assert!(!ready);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"]["sink"]["detail"], "discord down");
        sink.degraded("slow");
        assert!(h.ready().0);
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_when_a_loop_stops_beating() {
        let h = Health::new("1.0");
        let hb = h.heartbeat("tail", Duration::from_secs(10));
        assert!(h.live().0);
        tokio::time::advance(Duration::from_secs(11)).await;
        let (alive, body) = h.live();
        assert!(!alive);
        assert_eq!(body["stuck"][0], "tail");
        hb.beat();
        assert!(h.live().0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_declared_wait_keeps_the_loop_alive_until_its_bound() {
        let h = Health::new("1.0");
        let hb = h.heartbeat("sink", Duration::from_secs(10));
        {
            let _send = hb.waiting(Duration::from_secs(120));
            tokio::time::advance(Duration::from_secs(100)).await;
            assert!(h.live().0, "within the declared bound");
            {
                let _sleep = hb.waiting(Duration::from_secs(5));
                tokio::time::advance(Duration::from_secs(25)).await;
                assert!(h.live().0, "the outer bound still holds");
            }
            tokio::time::advance(Duration::from_secs(9)).await;
            assert!(h.live().0, "the inner wait's end beat 9 s ago");
            tokio::time::advance(Duration::from_secs(20)).await;
            assert!(!h.live().0, "past the outer bound and the silence: wedged");
        }
        assert!(h.live().0, "the wait ended: the loop moved on");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!h.live().0, "no wait declared, no beat: stuck");
    }

    #[tokio::test(start_paused = true)]
    async fn within_bounds_a_future_and_beats_when_it_ends() {
        let h = Health::new("1.0");
        let hb = h.heartbeat("provision", Duration::from_secs(2));
        let slept = hb.within(
            Duration::from_secs(30),
            tokio::time::sleep(Duration::from_secs(20)),
        );
        let probe = async {
            tokio::time::sleep(Duration::from_secs(19)).await;
            h.live().0
        };
        let ((), alive_during) = tokio::join!(slept, probe);
        assert!(alive_during);
        assert!(h.live().0);
    }
}
