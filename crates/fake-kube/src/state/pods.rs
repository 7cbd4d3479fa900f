//! The pod store, its change history (what watches resume from), and the
//! lifecycle steps the admin API drives: what a scheduler, the kubelet and
//! the garbage collector would do to a pod.

use std::collections::{BTreeMap, VecDeque};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::selector::{FieldSelector, LabelSelector};

/// `(namespace, name)`.
pub type PodKey = (String, String);

/// What happened to a pod, as a watch reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One pod write, kept so that a watch from an older resourceVersion can be
/// replayed and a list at an older resourceVersion reconstructed.
#[derive(Debug, Clone)]
pub struct PodChange {
    pub rv: u64,
    pub kind: ChangeKind,
    /// The pod before the write (`None` for a creation).
    pub prev: Option<Pod>,
    /// The pod after the write (for a deletion: as it was removed, carrying
    /// the deletion's resourceVersion, as the apiserver sends it).
    pub object: Pod,
}

/// Which pods a request is about.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl PodFilter {
    pub fn matches(&self, pod: &Pod) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| pod.metadata.namespace.as_deref() == Some(ns))
            && self.labels.matches(pod.metadata.labels.as_ref())
            && self.fields.matches(pod)
    }

    /// How a watch with this filter sees `change`: a pod whose labels stop
    /// matching is DELETED for it, one that starts matching ADDED.
    pub fn view(&self, change: &PodChange) -> Option<(ChangeKind, Pod)> {
        let before = change.prev.as_ref().is_some_and(|p| self.matches(p));
        let after = self.matches(&change.object);
        match change.kind {
            ChangeKind::Added => after.then(|| (ChangeKind::Added, change.object.clone())),
            ChangeKind::Deleted => {
                (before || after).then(|| (ChangeKind::Deleted, change.object.clone()))
            }
            ChangeKind::Modified => match (before, after) {
                (true, true) => Some((ChangeKind::Modified, change.object.clone())),
                (false, true) => Some((ChangeKind::Added, change.object.clone())),
                (true, false) => Some((ChangeKind::Deleted, change.object.clone())),
                (false, false) => None,
            },
        }
    }
}

/// Pods and their history.
#[derive(Debug, Default)]
pub struct PodStore {
    pub pods: BTreeMap<PodKey, Pod>,
    /// Changes newer than the compaction point, oldest first.
    pub history: VecDeque<PodChange>,
    /// The newest change compaction dropped (0: none): an open watch that had
    /// not delivered it yet can no longer be served and gets 410.
    pub compacted_through: u64,
}

pub fn key_of(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl PodStore {
    /// The pods matching `filter` at resourceVersion `rv` (`rv` ≥ the
    /// compaction point), sorted by namespace and name: the current pods
    /// with the newer changes undone.
    pub fn snapshot_at(&self, rv: u64, filter: &PodFilter) -> Vec<Pod> {
        let mut pods = self.pods.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            let key = key_of(&change.object);
            match &change.prev {
                Some(prev) => pods.insert(key, prev.clone()),
                None => pods.remove(&key),
            };
        }
        pods.into_values().filter(|p| filter.matches(p)).collect()
    }
}

/// A pod as the admin API's caller describes it; the rest is defaulted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPod {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Default `default`.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Default `node-1`.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Container names; default `["agent"]`.
    #[serde(default)]
    pub containers: Vec<String>,
}

impl NewPod {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    #[must_use]
    pub fn service_account(mut self, sa: &str) -> Self {
        self.service_account = Some(sa.to_owned());
        self
    }

    #[must_use]
    pub fn container(mut self, name: &str) -> Self {
        self.containers.push(name.to_owned());
        self
    }

    /// The Pod object (no uid, resourceVersion or timestamps yet).
    pub fn into_pod(self) -> Pod {
        let containers = if self.containers.is_empty() {
            vec!["agent".to_owned()]
        } else {
            self.containers
        };
        Pod {
            metadata: ObjectMeta {
                namespace: Some(self.namespace),
                name: Some(self.name),
                labels: Some(self.labels).filter(|l| !l.is_empty()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .into_iter()
                    .map(|name| Container {
                        image: Some(format!("registry.invalid/{name}:latest")),
                        name,
                        ..Container::default()
                    })
                    .collect(),
                node_name: Some(self.node_name.unwrap_or_else(|| "node-1".to_owned())),
                restart_policy: Some("Never".to_owned()),
                service_account_name: Some(
                    self.service_account.unwrap_or_else(|| "default".to_owned()),
                ),
                ..PodSpec::default()
            }),
            status: None,
        }
    }
}

/// A phase change or a container ending, as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum Lifecycle {
    /// Containers started: phase `Running`, Ready, containers running.
    Running,
    /// Every container exits with `exit_code` and `reason` (`Completed`,
    /// `Error`, `OOMKilled`, …): phase `Succeeded` if all exit 0, else
    /// `Failed` (restartPolicy `Never`).
    Terminated {
        exit_code: i32,
        reason: String,
        /// Only this container (the others keep running); the phase then
        /// changes only once no container runs.
        #[serde(default)]
        container: Option<String>,
    },
    /// Node-pressure eviction by the kubelet: phase `Failed`, reason
    /// `Evicted`, a `DisruptionTarget` condition, containers killed (137).
    Evicted {
        #[serde(default)]
        message: Option<String>,
    },
    /// Any phase with no other change (e.g. `Unknown` when the node is lost).
    Phase { phase: String },
}

/// The wall clock as a Kubernetes timestamp (jiff's `Timestamp::now` needs
/// its `std` feature, which k8s-openapi does not turn on).
pub fn timestamp_now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(0);
    let nanos = i32::try_from(since.subsec_nanos()).unwrap_or(0);
    Timestamp::new(secs, nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Now, as a `metav1.Time`.
pub fn now() -> Time {
    Time(timestamp_now())
}

/// Applies `step` to `pod`'s status.
pub fn apply_lifecycle(pod: &mut Pod, step: &Lifecycle) {
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let image = |name: &str| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let images: BTreeMap<String, String> = names.iter().map(|n| (n.clone(), image(n))).collect();
    let status = pod.status.get_or_insert_with(PodStatus::default);
    let started = status.start_time.clone().unwrap_or_else(now);
    let running = |name: &str| ContainerStatus {
        name: name.to_owned(),
        image: images.get(name).cloned().unwrap_or_default(),
        image_id: String::new(),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started.clone()),
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    let terminated = |name: &str, exit_code: i32, reason: &str| ContainerStatus {
        ready: false,
        started: Some(false),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.to_owned()),
                started_at: Some(started.clone()),
                finished_at: Some(now()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..running(name)
    };
    match step {
        Lifecycle::Running => {
            status.phase = Some("Running".to_owned());
            status.start_time = Some(started.clone());
            status.container_statuses = Some(names.iter().map(|n| running(n)).collect());
            set_condition(status, "Ready", "True", None);
            set_condition(status, "ContainersReady", "True", None);
        }
        Lifecycle::Terminated {
            exit_code,
            reason,
            container,
        } => {
            let mut statuses = status
                .container_statuses
                .clone()
                .unwrap_or_else(|| names.iter().map(|n| running(n)).collect());
            for s in &mut statuses {
                if container.as_ref().is_none_or(|c| *c == s.name) {
                    *s = terminated(&s.name, *exit_code, reason);
                }
            }
            let still_running = statuses
                .iter()
                .any(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
            if !still_running {
                let all_ok = statuses.iter().all(|s| {
                    s.state
                        .as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
                });
                status.phase = Some(if all_ok { "Succeeded" } else { "Failed" }.to_owned());
                set_condition(status, "Ready", "False", Some("PodCompleted"));
                set_condition(status, "ContainersReady", "False", Some("PodCompleted"));
            }
            status.container_statuses = Some(statuses);
        }
        Lifecycle::Evicted { message } => {
            status.phase = Some("Failed".to_owned());
            status.reason = Some("Evicted".to_owned());
            status.message = Some(message.clone().unwrap_or_else(|| {
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 52Mi."
                    .to_owned()
            }));
            status.container_statuses =
                Some(names.iter().map(|n| terminated(n, 137, "Error")).collect());
            set_condition(
                status,
                "DisruptionTarget",
                "True",
                Some("TerminationByKubelet"),
            );
            set_condition(status, "Ready", "False", Some("PodFailed"));
        }
        Lifecycle::Phase { phase } => status.phase = Some(phase.clone()),
    }
}

fn set_condition(status: &mut PodStatus, type_: &str, value: &str, reason: Option<&str>) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != type_);
    conditions.push(PodCondition {
        type_: type_.to_owned(),
        status: value.to_owned(),
        reason: reason.map(str::to_owned),
        last_transition_time: Some(now()),
        ..PodCondition::default()
    });
}

/// `metadata.deletionTimestamp` `grace` seconds from now.
pub fn deletion_time(grace_seconds: i64) -> Time {
    let now = timestamp_now();
    Time(
        now.checked_add(SignedDuration::from_secs(grace_seconds))
            .unwrap_or(now),
    )
}
