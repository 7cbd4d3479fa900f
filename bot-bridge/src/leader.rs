//! Leader election over a `coordination.k8s.io/v1` Lease: with several
//! replicas on one Postgres database, only the leader runs retention and the
//! run reconciler (both act on Discord for runs no request is about, and two
//! of them would race); every replica serves the API and interactions.
//!
//! Written by hand: kube 5's `kube-runtime` has no leader election, and the
//! protocol is small (client-go's `leaderelection`, reduced to what one
//! binary needs). Each `renew_interval` a replica reads the Lease:
//! - absent: it creates it, holding it;
//! - held by itself: it renews (`renewTime`), a write guarded by the
//!   resourceVersion (a 409 means someone else wrote: re-read next round);
//! - released (no holder), or unchanged for `lease_duration` by this
//!   replica's own clock: it takes it over (same guard, so of two contenders
//!   one wins). Expiry is judged by when this replica last *saw the Lease
//!   change*, not by the `renewTime` written in it, so clock skew between
//!   nodes cannot make two leaders (client-go does the same).
//!
//! A leader that cannot renew for `renew_deadline` (two thirds of the lease
//! duration) stops leading before anyone else may take over. On shutdown
//! the leader stops its leader-only work first, then releases the Lease
//! (empty holder), so another replica takes over at its next round
//! (seconds) instead of after the lease duration.
//!
//! Without a Lease configured (no KUBE_CONFIG: compose, one machine) the one
//! replica is always the leader ([`Leadership::always`]).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use ops::config::ConfigError;
use ops::health::Heartbeat;
use ops::Shutdown;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest accepted `LEADER_ELECTION_LEASE_DURATION` and renew interval.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(300);

/// Where and how replicas elect their leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's `holderIdentity`.
    pub identity: String,
    #[serde(with = "ops::config::duration")]
    pub lease_duration: Duration,
    #[serde(with = "ops::config::duration")]
    pub renew_interval: Duration,
}

/// A Kubernetes object name (DNS-1123 subdomain).
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl LeaderConfig {
    /// Validates the `LEADER_ELECTION_*` keys; `None` when no Lease is named.
    pub fn parse(
        lease: Option<&str>,
        identity: Option<&str>,
        lease_duration: Duration,
        renew_interval: Duration,
        has_kube: bool,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(lease) = lease.map(str::trim).filter(|l| !l.is_empty()) else {
            return Ok(None);
        };
        let Some((namespace, name)) = lease
            .split_once('/')
            .filter(|(ns, n)| dns_name(ns) && dns_name(n))
        else {
            return Err(ConfigError::invalid(
                "LEADER_ELECTION_LEASE",
                format!("{lease:?} is not NAMESPACE/NAME of a Lease (lowercase DNS names)"),
            ));
        };
        if !has_kube {
            return Err(ConfigError::invalid(
                "LEADER_ELECTION_LEASE",
                "needs KUBE_CONFIG (a kubeconfig path or `in-cluster`) to reach the Lease",
            ));
        }
        if renew_interval * 3 > lease_duration * 2 {
            return Err(ConfigError::invalid(
                "LEADER_ELECTION_RENEW_INTERVAL",
                format!(
                    "must be at most two thirds of LEADER_ELECTION_LEASE_DURATION ({}), so a \
                     leader renews before it may be replaced",
                    humantime::format_duration(lease_duration)
                ),
            ));
        }
        let identity = match identity.map(str::trim).filter(|i| !i.is_empty()) {
            Some(i) if i.len() <= 128 && i.bytes().all(|b| b.is_ascii_graphic()) => i.to_owned(),
            Some(_) => {
                return Err(ConfigError::invalid(
                    "LEADER_ELECTION_IDENTITY",
                    "must be up to 128 printable characters without spaces",
                ))
            }
            None => format!(
                "bot-bridge-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        Ok(Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity,
            lease_duration,
            renew_interval,
        }))
    }

    /// How long a leader keeps leading without a successful renewal.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// Whether this replica leads now; cheap to clone, read by the workers.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
}

impl Leadership {
    /// A replica that is always the leader (no Lease configured).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // Never changes: the sender is not needed, and a closed channel keeps its value.
        drop(tx);
        Self { rx }
    }

    /// A leadership the returned sender sets (the elector, or a test).
    pub fn channel() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Returns once leadership is `leading` (at once if it is already).
    pub async fn wait_for(&self, leading: bool) {
        let mut rx = self.rx.clone();
        // A closed channel (always-leader) keeps its last value.
        if rx.wait_for(|l| *l == leading).await.is_err() && *rx.borrow() != leading {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs `work` while this replica leads: started when it becomes leader
/// with a shutdown that fires when it stops leading (or at `shutdown`), and
/// awaited before leadership may be taken again, so two copies never run in
/// one process. While following, `heartbeat` is beaten so the liveness check
/// of a loop that only the leader runs does not fail on the followers.
pub async fn while_leading<F, Fut>(
    leadership: Leadership,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
    mut work: F,
) where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        // Following: beat until leading.
        loop {
            if let Some(h) = &heartbeat {
                h.beat();
            }
            tokio::select! {
                () = shutdown.wait() => return,
                () = leadership.wait_for(true) => break,
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
        let stop = Shutdown::new();
        let mut task = tokio::spawn(work(stop.clone()));
        tokio::select! {
            () = shutdown.wait() => {}
            () = leadership.wait_for(false) => {}
            _ = &mut task => {}
        }
        stop.trigger();
        let _ = task.await;
        if shutdown.is_triggered() {
            return;
        }
    }
}

/// What the elector reports: the `bridge_leader` gauge and a log line.
#[derive(Debug)]
pub struct LeadershipChanged<'a> {
    pub leading: bool,
    pub identity: &'a str,
    pub why: &'a str,
}

impl LeadershipChanged<'_> {
    pub fn emit(&self, metrics: &crate::events::BridgeMetrics) {
        metrics.set_leader(self.leading);
        if self.leading {
            tracing::info!(identity = self.identity, why = self.why, "leading");
        } else {
            tracing::warn!(identity = self.identity, why = self.why, "not leading");
        }
    }
}

/// Election failures (logged, retried next round).
#[derive(Debug, thiserror::Error)]
enum ElectError {
    #[error("Lease request failed: {0}")]
    Kube(#[from] kube::Error),
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The elector: keeps `tx` true exactly while this replica holds the Lease,
/// until `shutdown`, then releases it. `metrics` gets `bridge_leader`.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaderConfig,
    tx: watch::Sender<bool>,
    metrics: crate::events::BridgeMetrics,
    shutdown: Shutdown,
) {
    let mut elector = Elector {
        api,
        cfg,
        tx,
        metrics,
        observed: None,
        last_renew: None,
    };
    loop {
        let result = elector.round().await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, lease = %elector.cfg.name, "leader election round failed");
        }
        elector.check_deadline();
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(elector.cfg.renew_interval) => {}
        }
    }
    elector.release().await;
}

struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    tx: watch::Sender<bool>,
    metrics: crate::events::BridgeMetrics,
    /// The Lease's resourceVersion as last seen and when (local clock).
    observed: Option<(String, Instant)>,
    /// When this replica last wrote the Lease as holder.
    last_renew: Option<Instant>,
}

impl Elector {
    fn set(&self, leading: bool, why: &str) {
        if *self.tx.borrow() != leading {
            self.tx.send_replace(leading);
            LeadershipChanged {
                leading,
                identity: &self.cfg.identity,
                why,
            }
            .emit(&self.metrics);
        }
    }

    /// A leader whose renewals failed for the renew deadline steps down
    /// before another replica may consider the Lease expired.
    fn check_deadline(&mut self) {
        if let Some(at) = self.last_renew {
            if at.elapsed() > self.cfg.renew_deadline() {
                self.last_renew = None;
                self.set(false, "could not renew the Lease within the renew deadline");
            }
        }
    }

    fn spec(&self, lease: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = lease.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking_over {
                Some(now.clone())
            } else {
                lease.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking_over && lease.is_some() {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    async fn round(&mut self) -> Result<(), ElectError> {
        let current = match self.api.get_opt(&self.cfg.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.last_renew = Some(Instant::now());
                        self.set(true, "created the Lease");
                        Ok(())
                    }
                    // Another replica created it first: read it next round.
                    Err(e) if is_status(&e, 409) => Ok(()),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let now = Instant::now();
        let changed_at = match &self.observed {
            Some((v, at)) if *v == version => *at,
            _ => now,
        };
        self.observed = Some((version, changed_at));
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or("");
        let mine = holder == self.cfg.identity;
        let expired =
            holder.is_empty() || now.duration_since(changed_at) >= self.cfg.lease_duration;
        if !mine && !expired {
            self.last_renew = None;
            self.set(false, "another replica holds the Lease");
            return Ok(());
        }
        let mut next = current.clone();
        next.spec = Some(self.spec(Some(&spec), !mine));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observed = written
                    .metadata
                    .resource_version
                    .map(|v| (v, Instant::now()));
                self.last_renew = Some(Instant::now());
                self.set(
                    true,
                    if mine {
                        "renewed the Lease"
                    } else {
                        "took over an expired or released Lease"
                    },
                );
                Ok(())
            }
            // Someone wrote in between (a renewal, or a rival taking over).
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops leading and, if this replica holds the Lease, empties its holder.
    async fn release(&mut self) {
        let was = *self.tx.borrow();
        self.set(false, "shutting down");
        if !was {
            return;
        }
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
                return Ok(());
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(());
            };
            if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(3), release).await {
            Ok(Ok(())) => tracing::info!(lease = %self.cfg.name, "released the Lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the Lease"),
            Err(_) => tracing::warn!("releasing the Lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn config_is_validated_naming_the_key() {
        let ok = LeaderConfig::parse(
            Some("agentmon/bot-bridge"),
            None,
            15 * SECOND,
            5 * SECOND,
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ok.namespace.as_str(), ok.name.as_str()),
            ("agentmon", "bot-bridge")
        );
        assert!(ok.identity.starts_with("bot-bridge-"));
        assert_eq!(
            LeaderConfig::parse(None, None, SECOND, SECOND, false).unwrap(),
            None
        );
        let err = |lease, id, d, r, kube| {
            LeaderConfig::parse(Some(lease), id, d, r, kube)
                .unwrap_err()
                .to_string()
        };
        assert!(err("x", None, 15 * SECOND, 5 * SECOND, true).contains("LEADER_ELECTION_LEASE"));
        assert!(err("A/b", None, 15 * SECOND, 5 * SECOND, true).contains("LEADER_ELECTION_LEASE"));
        assert!(err("a/b", None, 15 * SECOND, 5 * SECOND, false).contains("KUBE_CONFIG"));
        assert!(err("a/b", None, 15 * SECOND, 11 * SECOND, true)
            .contains("LEADER_ELECTION_RENEW_INTERVAL"));
        assert!(err("a/b", Some("has space"), 15 * SECOND, 5 * SECOND, true)
            .contains("LEADER_ELECTION_IDENTITY"));
    }

    #[tokio::test(start_paused = true)]
    async fn leader_only_work_starts_and_stops_with_leadership() {
        let (tx, leadership) = Leadership::channel();
        let shutdown = Shutdown::new();
        let (runs_tx, mut runs) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(while_leading(
            leadership,
            shutdown.clone(),
            None,
            move |stop| {
                let runs_tx = runs_tx.clone();
                async move {
                    runs_tx.send("started").unwrap();
                    stop.wait().await;
                    runs_tx.send("stopped").unwrap();
                }
            },
        ));
        tokio::task::yield_now().await;
        assert!(runs.try_recv().is_err(), "a follower runs nothing");
        tx.send_replace(true);
        assert_eq!(runs.recv().await, Some("started"));
        tx.send_replace(false);
        assert_eq!(runs.recv().await, Some("stopped"));
        tx.send_replace(true);
        assert_eq!(runs.recv().await, Some("started"));
        shutdown.trigger();
        assert_eq!(runs.recv().await, Some("stopped"));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn always_leader_is_leader() {
        let l = Leadership::always();
        assert!(l.is_leader());
        tokio::time::timeout(SECOND, l.wait_for(true))
            .await
            .unwrap();
    }
}
