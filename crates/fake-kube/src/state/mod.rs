//! Everything the fake stores: one resourceVersion counter shared by every
//! kind (as etcd's revision is), pods with their change history, the token
//! table, recorded Events, Leases, pending faults and watch controls.

pub mod pods;
pub mod tokens;

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::config::FakeKubeConfig;
use crate::faults::Faults;
use crate::status::ApiError;
use pods::{key_of, now, ChangeKind, Lifecycle, PodChange, PodKey, PodStore};
use tokens::{TestToken, TokenEntry};

/// Which Events API an event came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventApi {
    /// `core/v1` (`/api/v1/namespaces/{ns}/events`).
    #[serde(rename = "v1")]
    CoreV1,
    /// `events.k8s.io/v1` (kube-runtime's `Recorder`).
    #[serde(rename = "events.k8s.io/v1")]
    EventsV1,
}

/// An Event a client created, as stored (patches applied).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub api: EventApi,
    pub namespace: String,
    pub name: String,
    /// The stored object, in its API's JSON shape.
    pub object: Value,
    /// How many writes (create + patches) it has had.
    pub writes: u32,
}

impl RecordedEvent {
    /// `reason`, whichever API.
    pub fn reason(&self) -> Option<&str> {
        self.object.get("reason").and_then(Value::as_str)
    }

    /// `note` (events.k8s.io) or `message` (core).
    pub fn note(&self) -> Option<&str> {
        self.object
            .get("note")
            .or_else(|| self.object.get("message"))
            .and_then(Value::as_str)
    }

    /// `type`: `Normal` or `Warning`.
    pub fn type_(&self) -> Option<&str> {
        self.object.get("type").and_then(Value::as_str)
    }

    /// The object it is about: `regarding` (events.k8s.io) or
    /// `involvedObject` (core).
    pub fn regarding(&self) -> Option<&Value> {
        self.object
            .get("regarding")
            .or_else(|| self.object.get("involvedObject"))
    }

    /// `regarding.kind/namespace/name`, e.g. `Pod/agents/agent-1`.
    pub fn regarding_key(&self) -> Option<String> {
        let r = self.regarding()?;
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        Some(format!("{}/{}/{}", s("kind"), s("namespace"), s("name")))
    }
}

/// How [`State::drop_watches`] ends open streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropMode {
    /// Finish the response cleanly (as a server-side timeout does).
    #[default]
    Close,
    /// Cut the response mid-stream (a dead connection or load balancer).
    Abort,
}

/// Steering for open watch streams; each stream compares the generations
/// it started with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchControl {
    pub drop_generation: u64,
    pub drop_mode: DropMode,
    pub expire_generation: u64,
    pub bookmark_generation: u64,
    /// While set, open streams deliver nothing (changes queue up).
    pub paused: bool,
}

/// Counters tests assert on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// API requests by route, faults and auth failures included.
    pub requests: BTreeMap<String, u64>,
    /// Requests refused 401 for a missing or wrong bearer token.
    pub unauthorized: u64,
    pub watches_started: u64,
    pub watches_open: u64,
    /// `410 Expired` answers: watch ERROR events and HTTP 410s.
    pub expired: u64,
    pub bookmarks_sent: u64,
    pub faults_served: BTreeMap<String, u64>,
    pub token_reviews: u64,
    pub lease_conflicts: u64,
}

/// The whole fake cluster.
#[derive(Debug)]
pub struct State {
    pub config: FakeKubeConfig,
    /// The newest resourceVersion handed out.
    pub rv: u64,
    /// Watches from a resourceVersion below this get 410.
    pub oldest_valid_rv: u64,
    pub pods: PodStore,
    pub tokens: BTreeMap<String, TokenEntry>,
    pub events: Vec<RecordedEvent>,
    pub leases: BTreeMap<PodKey, Lease>,
    pub faults: Faults,
    /// Bumped by every clear of the faults: requests held by a `hang`
    /// fault wait for it to change.
    pub faults_cleared: u64,
    pub watch: WatchControl,
    pub stats: Stats,
    /// Set by every change watch streams must look at.
    pub dirty: bool,
    uid_counter: u64,
}

/// Why an admin change could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("pod {0}/{1} not found")]
    NoSuchPod(String, String),
    #[error("pod {0}/{1} already exists")]
    PodExists(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("token not found")]
    NoSuchToken,
}

/// A DNS-1123 subdomain (object names, namespaces are labels).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl State {
    pub fn new(config: FakeKubeConfig) -> Self {
        Self {
            config,
            // Start above 1 so that "0" (any) never names a real version.
            rv: 100,
            oldest_valid_rv: 0,
            pods: PodStore::default(),
            tokens: BTreeMap::new(),
            events: Vec::new(),
            leases: BTreeMap::new(),
            faults: Faults::default(),
            faults_cleared: 0,
            watch: WatchControl::default(),
            stats: Stats::default(),
            dirty: false,
            uid_counter: 0,
        }
    }

    /// The next resourceVersion.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// A fresh UID (UUID-shaped, unique within the fake).
    pub fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        let n = self.uid_counter;
        format!("{:08x}-fa4e-4b0e-8000-{n:012x}", 0x6b75_6265_u32)
    }

    pub fn count_request(&mut self, route: &str) {
        *self.stats.requests.entry(route.to_owned()).or_default() += 1;
    }

    // ---- pods -----------------------------------------------------------

    fn record(&mut self, kind: ChangeKind, prev: Option<Pod>, object: Pod) {
        let rv = object
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.rv);
        self.pods.history.push_back(PodChange {
            rv,
            kind,
            prev,
            object,
        });
        while self.pods.history.len() > self.config.history_limit {
            if let Some(old) = self.pods.history.pop_front() {
                self.pods.compacted_through = old.rv;
                self.oldest_valid_rv = self.oldest_valid_rv.max(old.rv);
            }
        }
        self.dirty = true;
    }

    /// Creates `pod` as the apiserver would: uid, resourceVersion,
    /// creationTimestamp, phase `Pending`.
    pub fn create_pod(&mut self, mut pod: Pod) -> Result<Pod, AdminError> {
        let (ns, name) = key_of(&pod);
        if !valid_name(&ns) || !valid_name(&name) {
            return Err(AdminError::Invalid(format!(
                "pod namespace {ns:?} and name {name:?} must be DNS-1123 names"
            )));
        }
        if self.pods.pods.contains_key(&(ns.clone(), name.clone())) {
            return Err(AdminError::PodExists(ns, name));
        }
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(self.next_uid());
        }
        pod.metadata.creation_timestamp = Some(now());
        pod.metadata.deletion_timestamp = None;
        pod.metadata.resource_version = Some(self.next_rv().to_string());
        let status = pod.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Pending".to_owned());
        }
        self.pods.pods.insert((ns, name), pod.clone());
        self.record(ChangeKind::Added, None, pod.clone());
        Ok(pod)
    }

    /// Changes a pod with `f` (labels, status, anything) as one write.
    pub fn update_pod(
        &mut self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Pod),
    ) -> Result<Pod, AdminError> {
        let key = (ns.to_owned(), name.to_owned());
        let Some(prev) = self.pods.pods.get(&key).cloned() else {
            return Err(AdminError::NoSuchPod(key.0, key.1));
        };
        let mut pod = prev.clone();
        f(&mut pod);
        // Identity is not the caller's to change.
        pod.metadata.namespace = prev.metadata.namespace.clone();
        pod.metadata.name = prev.metadata.name.clone();
        pod.metadata.uid = prev.metadata.uid.clone();
        pod.metadata.creation_timestamp = prev.metadata.creation_timestamp.clone();
        pod.metadata.resource_version = Some(self.next_rv().to_string());
        self.pods.pods.insert(key, pod.clone());
        self.record(ChangeKind::Modified, Some(prev), pod.clone());
        Ok(pod)
    }

    pub fn pod_lifecycle(
        &mut self,
        ns: &str,
        name: &str,
        step: &Lifecycle,
    ) -> Result<Pod, AdminError> {
        self.update_pod(ns, name, |p| pods::apply_lifecycle(p, step))
    }

    /// Deletes a pod: with `grace_seconds > 0` it gets a deletionTimestamp
    /// (MODIFIED) and stays until [`State::remove_pod`]; with 0 it is gone
    /// at once (DELETED).
    pub fn delete_pod(
        &mut self,
        ns: &str,
        name: &str,
        grace_seconds: i64,
    ) -> Result<Pod, AdminError> {
        if grace_seconds > 0 {
            let already = self
                .pods
                .pods
                .get(&(ns.to_owned(), name.to_owned()))
                .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
            if !already {
                return self.update_pod(ns, name, |p| {
                    p.metadata.deletion_timestamp = Some(pods::deletion_time(grace_seconds));
                    p.metadata.deletion_grace_period_seconds = Some(grace_seconds);
                });
            }
            return self
                .pods
                .pods
                .get(&(ns.to_owned(), name.to_owned()))
                .cloned()
                .ok_or_else(|| AdminError::NoSuchPod(ns.to_owned(), name.to_owned()));
        }
        self.remove_pod(ns, name)
    }

    /// Removes a pod for good (the kubelet confirmed, or grace 0): DELETED.
    pub fn remove_pod(&mut self, ns: &str, name: &str) -> Result<Pod, AdminError> {
        let key = (ns.to_owned(), name.to_owned());
        let Some(prev) = self.pods.pods.remove(&key) else {
            return Err(AdminError::NoSuchPod(key.0, key.1));
        };
        let mut gone = prev.clone();
        if gone.metadata.deletion_timestamp.is_none() {
            gone.metadata.deletion_timestamp = Some(now());
            gone.metadata.deletion_grace_period_seconds = Some(0);
        }
        gone.metadata.resource_version = Some(self.next_rv().to_string());
        self.record(ChangeKind::Deleted, Some(prev), gone.clone());
        Ok(gone)
    }

    /// Drops all history: a watch or list from any earlier
    /// resourceVersion gets 410, and so does an open watch that had not
    /// delivered every change yet.
    pub fn compact(&mut self) {
        if let Some(last) = self.pods.history.back() {
            self.pods.compacted_through = last.rv;
        }
        self.pods.history.clear();
        self.oldest_valid_rv = self.rv;
        self.dirty = true;
    }

    /// Clears the pending faults and releases requests held by `hang`.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
        self.faults_cleared += 1;
    }

    // ---- watch steering ---------------------------------------------------

    pub fn drop_watches(&mut self, mode: DropMode) {
        self.watch.drop_generation += 1;
        self.watch.drop_mode = mode;
        self.dirty = true;
    }

    pub fn expire_watches(&mut self) {
        self.watch.expire_generation += 1;
        self.dirty = true;
    }

    pub fn send_bookmarks(&mut self) {
        self.watch.bookmark_generation += 1;
        self.dirty = true;
    }

    pub fn pause_watches(&mut self, paused: bool) {
        self.watch.paused = paused;
        self.dirty = true;
    }

    // ---- tokens -----------------------------------------------------------

    pub fn add_token(&mut self, token: TestToken, now: Instant) {
        let expires_at = token
            .expires_in_seconds
            .map(|s| now + std::time::Duration::from_secs(s));
        let credential_id = format!("JTI={}", self.next_uid());
        let service_account_uid = self.next_uid();
        self.tokens.insert(
            token.token.clone(),
            TokenEntry {
                token,
                expires_at,
                credential_id,
                service_account_uid,
            },
        );
    }

    /// Makes a token expired from now on.
    pub fn expire_token(&mut self, token: &str, now: Instant) -> Result<(), AdminError> {
        let entry = self.tokens.get_mut(token).ok_or(AdminError::NoSuchToken)?;
        entry.expires_at = Some(now);
        Ok(())
    }

    // ---- events and leases -------------------------------------------------

    pub fn find_event(
        &mut self,
        api: EventApi,
        ns: &str,
        name: &str,
    ) -> Option<&mut RecordedEvent> {
        self.events
            .iter_mut()
            .find(|e| e.api == api && e.namespace == ns && e.name == name)
    }

    pub fn lease(&self, ns: &str, name: &str) -> Option<&Lease> {
        self.leases.get(&(ns.to_owned(), name.to_owned()))
    }

    /// Fills server-side metadata on a created object and checks its name
    /// against the URL's namespace.
    pub fn admit_new(
        &mut self,
        meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        ns: &str,
        group: &str,
        kind: &str,
    ) -> Result<String, ApiError> {
        if let Some(body_ns) = meta.namespace.as_deref() {
            if body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let name = match (meta.name.as_deref(), meta.generate_name.as_deref()) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                let n = self.uid_counter + 1;
                format!("{prefix}{n:05x}")
            }
            _ => {
                return Err(ApiError::invalid(
                    group,
                    kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ))
            }
        };
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                group,
                kind,
                &name,
                "metadata.name",
                "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        meta.name = Some(name.clone());
        meta.namespace = Some(ns.to_owned());
        meta.uid = Some(self.next_uid());
        meta.creation_timestamp = Some(now());
        meta.resource_version = Some(self.next_rv().to_string());
        Ok(name)
    }
}
