//! The run reconciler: ends runs whose watcher can no longer call `complete`.
//!
//! A run ends normally when its watcher calls `complete`. A pod that is
//! OOM-killed, evicted, deleted or killed past its grace period never does, so
//! its run would stay active forever (webhook live, channel never archived,
//! the guild filling up towards Discord's 500 channels). Two signals end such
//! runs, each after a grace period in which a late `complete` still wins:
//!
//! - **Kubernetes** (`KUBE_CONFIG` set): the watcher sends its pod identity
//!   (downward API) in `POST /v1/runs`; a kube-runtime watcher follows the
//!   labelled agent pods. A bound pod that is deleted (or absent from a
//!   relist), or reaches `Succeeded`/`Failed`, ends its run after
//!   `RECONCILE_GRACE`, with the reason from the pod's status.
//! - **Silence** (`RUN_SILENCE_TIMEOUT`, for runs the reconciler cannot
//!   follow): the watcher heartbeats its run; a run silent that long after a
//!   heartbeat ends (a run that never heartbeated, from an older watcher, is
//!   left to `complete`).
//!
//! The database is the record of what was finalised: a finalisation is the
//! same path `complete` takes (`AppState::finish`, under the provisioning
//! lock, only while the run is active), so a restart, a relist after a 410 or
//! two signals at once never end a run twice. What the watch saw lives only
//! in memory: after a restart the first list rebuilds it, and a bound pod the
//! list does not show was deleted meanwhile.

pub mod telemetry;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use ops::config::ConfigError;
use ops::health::Heartbeat;
use ops::shutdown::Shutdown;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::access::Caller;
use crate::app::AppState;
use crate::config::RunContainer;
use crate::guild::DiscordError;
use crate::runs::{now_unix, RunsError};
use crate::store::{IdentitySource, PodIdentity, RunStatus};
use telemetry::{FinalizeReason, ReconcileError, RunFinalized};

/// The pod label the chart's sidecar template sets on agent pods.
pub const DEFAULT_LABEL_SELECTOR: &str = "agentmon.io/watcher=true";
/// How often active runs are checked against what the watch saw.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the guild's channels are counted for `bridge_guild_channels`
/// (provisioning updates it too); one request, far below any limit.
pub const CHANNEL_COUNT_EVERY: Duration = Duration::from_secs(300);
/// Longest accepted pod name, namespace or UID (Kubernetes allows 253).
const MAX_POD_FIELD: usize = 253;
/// Bound on one Kubernetes Event write (the kube client retries on its own).
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// `reportingController` of the Events bot-bridge writes.
pub const EVENT_CONTROLLER: &str = "agentmon.io/bot-bridge";

/// Where the Kubernetes API is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KubeSource {
    /// A kubeconfig file (its current context).
    Kubeconfig { path: PathBuf },
    /// The pod's ServiceAccount (`KUBE_CONFIG=in-cluster`).
    InCluster,
}

/// Configuration of the reconciler and of silence detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileConfig {
    /// `None`: no Kubernetes access (no pod watch, no Events).
    pub kube: Option<KubeSource>,
    /// Namespaces watched; empty: the whole cluster.
    pub namespaces: Vec<String>,
    pub label_selector: String,
    #[serde(with = "ops::config::duration")]
    pub grace: Duration,
    /// Zero: off.
    #[serde(with = "ops::config::duration")]
    pub silence_timeout: Duration,
}

/// A DNS-1123 label, what a namespace name is.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ReconcileConfig {
    /// Validates the raw values; errors name the environment variable.
    pub fn parse(
        kube_config: Option<&str>,
        namespaces: Option<&str>,
        label_selector: &str,
        grace: Duration,
        silence_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let kube = match kube_config.map(str::trim) {
            None | Some("") => None,
            Some("in-cluster") => Some(KubeSource::InCluster),
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(ConfigError::invalid(
                        "KUBE_CONFIG",
                        format!(
                            "{} is not a readable kubeconfig file (or use `in-cluster`)",
                            path.display()
                        ),
                    ));
                }
                Some(KubeSource::Kubeconfig { path })
            }
        };
        let mut list = Vec::new();
        for ns in namespaces.unwrap_or("").split(',').map(str::trim) {
            if ns.is_empty() {
                continue;
            }
            if !is_dns_label(ns) {
                return Err(ConfigError::invalid(
                    "RECONCILE_NAMESPACES",
                    format!("{ns:?} is not a namespace name (lowercase letters, digits, '-')"),
                ));
            }
            if !list.iter().any(|n| n == ns) {
                list.push(ns.to_owned());
            }
        }
        let label_selector = label_selector.trim().to_owned();
        if label_selector.is_empty() || label_selector.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                "RECONCILE_LABEL_SELECTOR",
                "must be a label selector such as agentmon.io/watcher=true",
            ));
        }
        Ok(Self {
            kube,
            namespaces: list,
            label_selector,
            grace,
            silence_timeout,
        })
    }
}

/// Why the Kubernetes client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeSetupError {
    #[error("KUBE_CONFIG: {0}")]
    Kubeconfig(String),
    #[error("in-cluster Kubernetes config: {0}")]
    InCluster(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// Builds the client: the kubeconfig when one is named, else the in-cluster
/// ServiceAccount. Never `Config::infer()`: what bot-bridge talks to is what
/// its configuration says.
pub async fn kube_client(source: &KubeSource) -> Result<kube::Client, KubeSetupError> {
    let config = kube_config(source).await?;
    kube::Client::try_from(config).map_err(|e| KubeSetupError::Client(e.to_string()))
}

/// The client configuration `KUBE_CONFIG` names (see [`kube_client`]).
pub async fn kube_config(source: &KubeSource) -> Result<kube::Config, KubeSetupError> {
    Ok(match source {
        KubeSource::Kubeconfig { path } => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeSetupError::Kubeconfig(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeSetupError::Kubeconfig(e.to_string()))?
        }
        KubeSource::InCluster => {
            kube::Config::incluster().map_err(|e| KubeSetupError::InCluster(e.to_string()))?
        }
    })
}

/// Takes the optional `pod` object out of a `POST /v1/runs` body and checks it.
pub fn take_pod(body: &mut serde_json::Value) -> Result<Option<PodIdentity>, RunsError> {
    let Some(raw) = body.as_object_mut().and_then(|o| o.remove("pod")) else {
        return Ok(None);
    };
    if raw.is_null() {
        return Ok(None);
    }
    let pod: PodIdentity = serde_json::from_value(raw).map_err(|e| {
        RunsError::BadRequest(format!(
            "pod must be {{\"namespace\", \"name\", \"uid\"}}: {e}"
        ))
    })?;
    check_pod(&pod)?;
    Ok(Some(pod))
}

/// Checks a pod identity a watcher sent.
pub fn check_pod(pod: &PodIdentity) -> Result<(), RunsError> {
    for (name, v) in [
        ("pod.namespace", &pod.namespace),
        ("pod.name", &pod.name),
        ("pod.uid", &pod.uid),
    ] {
        if v.is_empty() || v.len() > MAX_POD_FIELD || v.chars().any(|c| c.is_control()) {
            return Err(RunsError::BadRequest(format!(
                "{name} must be 1 to {MAX_POD_FIELD} printable characters"
            )));
        }
    }
    Ok(())
}

/// How a pod ended, as the closing embed and the metric say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub reason: FinalizeReason,
    pub detail: String,
}

/// The ending a pod's status shows, if it ended (`Succeeded`/`Failed`).
pub fn pod_ending(pod: &Pod) -> Option<Ending> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Failed" && phase != "Succeeded" {
        return None;
    }
    if status.reason.as_deref() == Some("Evicted") {
        let message = status.message.clone().unwrap_or_default();
        return Some(Ending {
            reason: FinalizeReason::Evicted,
            detail: if message.is_empty() {
                "the pod was evicted".to_owned()
            } else {
                format!("the pod was evicted: {message}")
            },
        });
    }
    let terminated: Vec<(String, i32, String)> = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            Some((
                c.name.clone(),
                t.exit_code,
                t.reason.clone().unwrap_or_default(),
            ))
        })
        .collect();
    if let Some((name, code, _)) = terminated.iter().find(|(_, _, r)| r == "OOMKilled") {
        return Some(Ending {
            reason: FinalizeReason::OomKilled,
            detail: format!("container {name} was OOMKilled (exit code {code})"),
        });
    }
    if phase == "Succeeded" {
        return Some(Ending {
            reason: FinalizeReason::SucceededWithoutComplete,
            detail: "the pod succeeded but its watcher never completed the run".to_owned(),
        });
    }
    let detail = match terminated.iter().find(|(_, code, _)| *code != 0) {
        Some((name, code, reason)) if !reason.is_empty() => {
            format!("container {name} exited with code {code} ({reason})")
        }
        Some((name, code, _)) => format!("container {name} exited with code {code}"),
        None => match status.reason.as_deref() {
            Some(r) => format!("the pod failed ({r})"),
            None => "the pod failed".to_owned(),
        },
    };
    Some(Ending {
        reason: FinalizeReason::Failed,
        detail,
    })
}

fn deleted(pod: &PodIdentity) -> Ending {
    Ending {
        reason: FinalizeReason::Deleted,
        detail: format!("pod {}/{} was deleted", pod.namespace, pod.name),
    }
}

/// One pod as the watch last showed it.
#[derive(Debug, Clone)]
struct Seen {
    stream: usize,
    /// Its ending and when it was first seen ended.
    ended: Option<(Ending, Instant)>,
}

/// What a run's pod looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Alive, or not known yet (the watch has not listed its namespace).
    Alive,
    /// Ended (or gone) since that instant.
    Ended(Ending, Instant),
}

/// What the pod watch saw, rebuilt from watcher events (pure: tested alone).
#[derive(Debug, Default)]
pub struct PodTracker {
    /// Present pods by UID.
    pods: HashMap<String, Seen>,
    /// Pods removed while bound runs may still be active, by UID.
    gone: HashMap<String, (Ending, Instant)>,
    /// Bound pods no listing showed, by UID, since when.
    missing: HashMap<String, Instant>,
    /// Streams whose listing finished at least once.
    synced: HashSet<usize>,
    /// UIDs of the listing in progress, per stream.
    listing: HashMap<usize, HashSet<String>>,
}

fn uid_of(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

fn identity_of(pod: &Pod) -> PodIdentity {
    PodIdentity {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

impl PodTracker {
    /// Handles one event of stream `stream` at `now`.
    pub fn handle(&mut self, stream: usize, event: watcher::Event<Pod>, now: Instant) {
        match event {
            watcher::Event::Init => {
                self.listing.insert(stream, HashSet::new());
            }
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = uid_of(&pod) {
                    self.listing.entry(stream).or_default().insert(uid);
                }
                self.apply(stream, &pod, now);
            }
            watcher::Event::InitDone => {
                let listed = self.listing.remove(&stream).unwrap_or_default();
                let vanished: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|(uid, s)| s.stream == stream && !listed.contains(*uid))
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in vanished {
                    if let Some(seen) = self.pods.remove(&uid) {
                        let ended = seen.ended.unwrap_or_else(|| {
                            (
                                Ending {
                                    reason: FinalizeReason::Deleted,
                                    detail: "the pod was deleted".to_owned(),
                                },
                                now,
                            )
                        });
                        self.gone.insert(uid, ended);
                    }
                }
                self.synced.insert(stream);
            }
            watcher::Event::Apply(pod) => self.apply(stream, &pod, now),
            watcher::Event::Delete(pod) => {
                let Some(uid) = uid_of(&pod) else { return };
                let before = self.pods.remove(&uid).and_then(|s| s.ended);
                let ended = match (before, pod_ending(&pod)) {
                    (Some(b), _) => b,
                    (None, Some(e)) => (e, now),
                    (None, None) => (deleted(&identity_of(&pod)), now),
                };
                self.gone.insert(uid, ended);
            }
        }
    }

    fn apply(&mut self, stream: usize, pod: &Pod, now: Instant) {
        let Some(uid) = uid_of(pod) else { return };
        self.missing.remove(&uid);
        self.gone.remove(&uid);
        let ending = pod_ending(pod);
        let previous = self.pods.get(&uid).and_then(|s| s.ended.clone());
        let ended = match (ending, previous) {
            (Some(e), Some((_, since))) => Some((e, since)),
            (Some(e), None) => Some((e, now)),
            (None, _) => None,
        };
        self.pods.insert(uid, Seen { stream, ended });
    }

    /// What `pod` (watched by `stream`) looks like at `now`.
    pub fn verdict(&mut self, stream: usize, pod: &PodIdentity, now: Instant) -> Verdict {
        if let Some(seen) = self.pods.get(&pod.uid) {
            return match &seen.ended {
                Some((e, since)) => Verdict::Ended(e.clone(), *since),
                None => Verdict::Alive,
            };
        }
        if let Some((e, since)) = self.gone.get(&pod.uid) {
            return Verdict::Ended(e.clone(), *since);
        }
        if !self.synced.contains(&stream) {
            return Verdict::Alive;
        }
        // Listed, yet not there: deleted while nobody watched (or another pod
        // took its name). Counted from when it was first missed.
        let since = *self.missing.entry(pod.uid.clone()).or_insert(now);
        Verdict::Ended(deleted(pod), since)
    }

    /// Forgets removed pods no active run is bound to (bounds memory).
    pub fn retain_bound(&mut self, bound: &HashSet<&str>) {
        self.gone.retain(|uid, _| bound.contains(uid.as_str()));
        self.missing.retain(|uid, _| bound.contains(uid.as_str()));
    }
}

/// The stream that watches `namespace`, if any.
fn stream_for(namespaces: &[String], namespace: &str) -> Option<usize> {
    if namespaces.is_empty() {
        return Some(0);
    }
    namespaces.iter().position(|n| n == namespace)
}

/// Writes Kubernetes Events on agent pods ("ChannelProvisioned", "RunFinalized").
#[derive(Clone)]
pub struct PodEvents {
    recorder: Recorder,
}

impl std::fmt::Debug for PodEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodEvents").finish_non_exhaustive()
    }
}

impl PodEvents {
    pub fn new(client: kube::Client) -> Self {
        let instance = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "bot-bridge".to_owned());
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: EVENT_CONTROLLER.to_owned(),
                    instance: Some(instance),
                },
            ),
        }
    }
}

/// The closing embed a finalised run's channel gets.
pub fn closing_message(ending: &Ending) -> serde_json::Value {
    let detail: String = ending.detail.chars().take(1000).collect();
    json!({
        "embeds": [{
            "title": ending.reason.title(),
            "description": format!(
                "{detail}\nThe run was finalised without its watcher's completion \
                 (reason: `{}`); this channel is archived after retention.",
                ending.reason.as_str()
            ),
            "color": 0x00E7_4C3C,
        }],
        "allowed_mentions": { "parse": [] },
    })
}

impl AppState {
    /// The Event writer, when Kubernetes is configured.
    fn pod_events(&self) -> Option<&PodEvents> {
        self.inner.pod_events.get()
    }

    /// Enables Kubernetes Events (once, at start-up).
    pub fn set_pod_events(&self, events: PodEvents) {
        let _ = self.inner.pod_events.set(events);
    }

    /// Writes an Event on `pod` in the background (never delays a request);
    /// a failure is counted in `bridge_reconcile_errors_total`.
    pub(crate) fn publish_pod_event(
        &self,
        pod: PodIdentity,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let Some(events) = self.pod_events().cloned() else {
            return;
        };
        let metrics = self.metrics().clone();
        tokio::spawn(async move {
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                ..ObjectReference::default()
            };
            let event = KubeEvent {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: action.into(),
                secondary: None,
            };
            let result =
                tokio::time::timeout(EVENT_TIMEOUT, events.recorder.publish(&event, &reference))
                    .await;
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_owned(),
            };
            ReconcileError {
                what: "event",
                run_id: None,
                error: &error,
            }
            .emit(&metrics.lifecycle);
        });
    }

    /// Binds a run to the pod its watcher claims (`POST /v1/runs`), and says
    /// so on the pod. Called for the run's owner only.
    pub async fn bind_pod(
        &self,
        run_id: &str,
        channel_id: &str,
        pod: PodIdentity,
    ) -> Result<(), RunsError> {
        let changed = self
            .stored(
                self.store()
                    .bind_pod(run_id.to_owned(), pod.clone(), IdentitySource::Claimed),
            )
            .await?;
        if changed {
            self.announce_provisioned(run_id, channel_id, pod);
        }
        Ok(())
    }

    /// The "channel provisioned" Event on the run's pod.
    pub fn announce_provisioned(&self, run_id: &str, channel_id: &str, pod: PodIdentity) {
        self.publish_pod_event(
            pod,
            EventType::Normal,
            "ChannelProvisioned",
            "Provision",
            format!("agentmon run {run_id} streams to Discord channel {channel_id}"),
        );
    }

    /// `POST /v1/runs/{id}/heartbeat`: the run's watcher is alive.
    pub async fn heartbeat(&self, run_id: &str, caller: &Caller) -> Result<(), RunsError> {
        let run = self.stored_run(run_id).await?;
        self.authorize(&run, caller).await?;
        if run.status != RunStatus::Active {
            return Err(RunsError::RunFinished);
        }
        self.stored(self.store().heartbeat(run_id.to_owned(), now_unix()))
            .await?;
        Ok(())
    }

    /// Provisioning by a watcher that heartbeats counts as its first beat.
    pub async fn provisioned_alive(&self, run_id: &str) -> Result<(), RunsError> {
        self.stored(self.store().heartbeat(run_id.to_owned(), now_unix()))
            .await?;
        Ok(())
    }

    /// Ends an active run whose watcher did not: posts the closing embed
    /// through its webhook, then takes `complete`'s path (webhook revoked,
    /// archive scheduled). `Ok(false)` when the run was no longer active.
    pub async fn finalize(&self, run_id: &str, ending: &Ending) -> Result<bool, RunsError> {
        let _guard = self.stored(self.provision_lock()).await?;
        let run = self.stored_run(run_id).await?;
        if run.status != RunStatus::Active {
            return Ok(false);
        }
        // A hand-off arriving from here on waits for this finish.
        let _finishing = self
            .stored(self.store().finish_lock(run_id.to_owned()))
            .await?;
        // A pod that is gone after handing off is the normal case: the
        // drainer delivers the hand-off and completes the run itself.
        if self.handing_off(run_id).await? {
            return Ok(false);
        }
        if let (Some(id), Some(token)) = (&run.webhook_id, &run.webhook_token) {
            let thread = match self.settings().run_container {
                RunContainer::Thread => run.channel_id.clone(),
                RunContainer::Channel => None,
            };
            let message = closing_message(ending);
            match self
                .call(
                    Some(run_id),
                    self.discord()
                        .execute_webhook(id, token, thread.as_deref(), &message),
                )
                .await
            {
                Ok(()) | Err(DiscordError::NotFound) => {}
                // Discord will never take it: end the run without the embed.
                Err(DiscordError::Http { status, .. })
                    if (400..500).contains(&status) && status != 429 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let summary = json!({
            "finalized_by": "reconciler",
            "reason": ending.reason.as_str(),
            "detail": ending.detail,
        });
        self.finish(run, Some(summary), ending.reason).await?;
        RunFinalized {
            run_id,
            reason: ending.reason,
            detail: &ending.detail,
        }
        .emit();
        Ok(true)
    }

    /// Whether `run_id` has an unfinished hand-off (pending messages, or a
    /// `complete` the drainer has not taken yet).
    pub(crate) async fn handing_off(&self, run_id: &str) -> Result<bool, RunsError> {
        let runs = self.stored(self.store().handoff_runs()).await?;
        Ok(runs.iter().any(|r| r.run_id == run_id))
    }

    /// Sets `bridge_guild_channels` from a listing of the guild.
    pub async fn count_guild_channels(&self) {
        let guild = self.settings().guild_id.clone();
        if let Ok(channels) = self
            .call(None, self.discord().list_guild_channels(&guild))
            .await
        {
            self.metrics().lifecycle.set_guild_channels(channels.len());
        }
    }

    /// Writes the "RunFinalized" Event on the run's pod, if it has one.
    pub(crate) async fn announce_finalized(&self, run_id: &str, reason: FinalizeReason) {
        if self.pod_events().is_none() {
            return;
        }
        let Ok(Some(pod)) = self.store().run_pod(run_id.to_owned()).await else {
            return;
        };
        let type_ = if reason == FinalizeReason::Completed {
            EventType::Normal
        } else {
            EventType::Warning
        };
        self.publish_pod_event(
            pod,
            type_,
            "RunFinalized",
            "Finalize",
            format!("agentmon run {run_id} finalised: {}", reason.as_str()),
        );
    }
}

/// One pass over the active runs: which to finalise now, and why.
pub fn due(
    state_runs: &[crate::store::RunLiveness],
    tracker: &mut PodTracker,
    cfg: &ReconcileConfig,
    watching: bool,
    started_unix: i64,
    now_unix: i64,
    now: Instant,
) -> Vec<(String, Ending)> {
    let mut out = Vec::new();
    let mut bound = HashSet::new();
    for run in state_runs {
        let stream = match (&run.pod, watching) {
            (Some(pod), true) => stream_for(&cfg.namespaces, &pod.namespace),
            _ => None,
        };
        if let (Some(pod), Some(stream)) = (&run.pod, stream) {
            bound.insert(pod.uid.as_str());
            if let Verdict::Ended(ending, since) = tracker.verdict(stream, pod, now) {
                if now.saturating_duration_since(since) >= cfg.grace {
                    out.push((run.run_id.clone(), ending));
                }
            }
            continue;
        }
        // Not followed through Kubernetes: silence ends it, once its watcher
        // has heartbeated at all (a watcher from before heartbeats never
        // does). A restart of bot-bridge counts as a sign of life (no
        // heartbeat could arrive meanwhile).
        let Some(last_heartbeat) = run.last_heartbeat else {
            continue;
        };
        if cfg.silence_timeout.is_zero() {
            continue;
        }
        let last = last_heartbeat.max(started_unix);
        let silent = u64::try_from(now_unix.saturating_sub(last)).unwrap_or(0);
        if silent >= cfg.silence_timeout.as_secs() {
            out.push((
                run.run_id.clone(),
                Ending {
                    reason: FinalizeReason::Silent,
                    detail: format!(
                        "no heartbeat from the run's watcher for {}",
                        humantime::format_duration(Duration::from_secs(silent))
                    ),
                },
            ));
        }
    }
    tracker.retain_bound(&bound);
    out
}

type PodStream =
    futures::stream::BoxStream<'static, (usize, Result<watcher::Event<Pod>, watcher::Error>)>;

/// The watch streams: one per namespace, or one over the cluster.
fn pod_streams(client: &kube::Client, cfg: &ReconcileConfig) -> PodStream {
    let wc = watcher::Config::default().labels(&cfg.label_selector);
    let apis: Vec<Api<Pod>> = if cfg.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        cfg.namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let streams = apis.into_iter().enumerate().map(|(i, api)| {
        watcher(api, wc.clone())
            .default_backoff()
            .map(move |e| (i, e))
            .boxed()
    });
    futures::stream::select_all(streams).boxed()
}

/// Runs the reconciler until shutdown. Without a client only silence counts.
pub async fn run(
    state: AppState,
    cfg: ReconcileConfig,
    client: Option<kube::Client>,
    shutdown: Shutdown,
    heartbeat: Option<Heartbeat>,
) {
    let watching = client.is_some();
    let mut streams: PodStream = match &client {
        Some(c) => pod_streams(c, &cfg),
        None => futures::stream::pending().boxed(),
    };
    let started_unix = now_unix();
    let mut tracker = PodTracker::default();
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finalizing: Option<tokio::task::JoinHandle<()>> = None;
    let mut counted: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            Some((stream, event)) = streams.next() => match event {
                Ok(e) => tracker.handle(stream, e, Instant::now()),
                Err(e) => ReconcileError { what: "watch", run_id: None, error: &e }
                    .emit(&state.metrics().lifecycle),
            },
            _ = timer.tick() => {
                if let Some(h) = &heartbeat {
                    h.beat();
                }
                if counted.is_none_or(|t| t.elapsed() >= CHANNEL_COUNT_EVERY) {
                    counted = Some(Instant::now());
                    let state = state.clone();
                    tokio::spawn(async move { state.count_guild_channels().await });
                }
                if finalizing.as_ref().is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                let runs = match state.store().active_liveness().await {
                    Ok(r) => r,
                    Err(e) => {
                        state.report(crate::events::ErrorKind::Store, None, &e);
                        continue;
                    }
                };
                let mut due = due(&runs, &mut tracker, &cfg, watching, started_unix, now_unix(), Instant::now());
                if !due.is_empty() {
                    // Runs whose hand-off drains are left to the drainer (and
                    // not retried here every tick).
                    match state.store().handoff_runs().await {
                        Ok(h) => due.retain(|(id, _)| !h.iter().any(|r| &r.run_id == id)),
                        Err(e) => {
                            state.report(crate::events::ErrorKind::Store, None, &e);
                            continue;
                        }
                    }
                }
                if due.is_empty() {
                    continue;
                }
                let state = state.clone();
                // Finalisations go on beside the watch, which must keep being read.
                finalizing = Some(tokio::spawn(async move {
                    for (run_id, ending) in due {
                        if let Err(e) = state.finalize(&run_id, &ending).await {
                            ReconcileError { what: "finalize", run_id: Some(&run_id), error: &e }
                                .emit(&state.metrics().lifecycle);
                        }
                    }
                }));
            }
        }
    }
    if let Some(h) = finalizing {
        // Whatever is left is redone after the restart (the database knows).
        h.abort();
    }
}

#[cfg(test)]
mod tests;
