//! A fake Kubernetes API for agentmon's tests: the cluster in every test,
//! since no kube-apiserver can be installed here.
//!
//! The real `kube` client talks to it over a kubeconfig this crate writes
//! ([`FakeKube::kubeconfig`]), so the code under test is the production
//! code. It serves, in the apiserver's JSON shapes (k8s-openapi types):
//!
//! - pods: list (label/field selectors, resourceVersion and
//!   resourceVersionMatch semantics, `limit`/`continue`), get, and watch
//!   (ADDED/MODIFIED/DELETED, BOOKMARK with `allowWatchBookmarks`,
//!   `sendInitialEvents`, `timeoutSeconds`, `410 Expired` as an `ERROR`
//!   event for a compacted resourceVersion);
//! - `TokenReview`s answered from a table of test tokens (audiences,
//!   expiry, the bound pod's name and UID in `user.extra`);
//! - Events (`core/v1` and `events.k8s.io/v1`), stored for assertions;
//! - Leases (`coordination.k8s.io/v1`) with optimistic concurrency.
//!
//! Every API request needs the kubeconfig's bearer token (401 otherwise).
//! The pods' lifecycle, the tokens and the faults are driven through the
//! methods here or the `/_admin` HTTP API (see `README.md` beside this
//! crate's `Cargo.toml`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fake_kube::{FakeKube, NewPod};
//! let fake = FakeKube::start().await?;
//! let dir = tempfile::tempdir()?;
//! let kubeconfig = fake.kubeconfig(dir.path().join("kubeconfig"))?;
//! let pod = fake.create_pod(NewPod::new("agents", "agent-1").label("app", "agent"))?;
//! fake.oom_kill("agents", "agent-1")?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod faults;
pub mod selector;
pub mod server;
pub mod state;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fake_support::Serving;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::time::Instant;

pub use config::{FakeKubeConfig, DEFAULT_API_AUDIENCE};
pub use faults::{Fault, FaultKind, Route};
pub use k8s_openapi;
pub use state::pods::{Lifecycle, NewPod};
pub use state::tokens::{extra, TestToken};
pub use state::{AdminError, DropMode, EventApi, RecordedEvent, State, Stats};

use server::Shared;

/// Why the fake could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// A running fake cluster. Dropping it stops the server (in the background);
/// [`FakeKube::stop`] waits for that.
#[derive(Debug)]
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    serving: Serving,
}

impl FakeKube {
    /// Starts with [`FakeKubeConfig::default`] on 127.0.0.1, port 0.
    pub async fn start() -> Result<Self, FakeError> {
        Self::start_with(FakeKubeConfig::default()).await
    }

    /// Binds `config.addr` and serves until stopped.
    pub async fn start_with(config: FakeKubeConfig) -> Result<Self, FakeError> {
        let (listener, addr) =
            fake_support::bind(config.addr)
                .await
                .map_err(|source| FakeError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let shared = Arc::new(Shared::new(State::new(config)));
        let serving = Serving::spawn(listener, server::router(shared.clone()));
        Ok(Self {
            shared,
            addr,
            serving,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: the cluster's server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `{url}/_admin/{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}/_admin/{}", self.url(), path.trim_start_matches('/'))
    }

    /// The bearer token the kubeconfig carries.
    pub fn client_token(&self) -> String {
        self.with_state(|s| s.config.client_token.clone())
    }

    /// Writes a kubeconfig for this cluster (context `fake-kube`, default
    /// namespace `default`) to `path` and returns the path.
    pub fn kubeconfig(&self, path: impl AsRef<Path>) -> Result<PathBuf, FakeError> {
        let path = path.as_ref().to_path_buf();
        std::fs::write(
            &path,
            kubeconfig_yaml(&self.url(), &self.client_token(), "default"),
        )
        .map_err(|source| FakeError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Runs `f` on the fake's state (to inspect it, or to arrange several
    /// changes as one atomic step: no watch sees anything in between).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        self.shared.with(f)
    }

    // ---- pods ---------------------------------------------------------------

    /// Creates a pod (phase `Pending`) and returns it as stored.
    pub fn create_pod(&self, pod: NewPod) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.create_pod(pod.into_pod()))?)
    }

    /// Creates a pod from a whole Pod object.
    pub fn create_pod_object(&self, pod: Pod) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.create_pod(pod))?)
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        self.with_state(|s| s.pods.pods.get(&(ns.to_owned(), name.to_owned())).cloned())
    }

    pub fn pods(&self) -> Vec<Pod> {
        self.with_state(|s| s.pods.pods.values().cloned().collect())
    }

    /// Changes a pod with `f` as one write (MODIFIED).
    pub fn update_pod(
        &self,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Pod),
    ) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.update_pod(ns, name, f))?)
    }

    pub fn lifecycle(&self, ns: &str, name: &str, step: &Lifecycle) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.pod_lifecycle(ns, name, step))?)
    }

    /// Phase `Running`, containers running and ready.
    pub fn run_pod(&self, ns: &str, name: &str) -> Result<Pod, FakeError> {
        self.lifecycle(ns, name, &Lifecycle::Running)
    }

    /// Every container exits with `exit_code`/`reason`: `Succeeded` or `Failed`.
    pub fn terminate_pod(
        &self,
        ns: &str,
        name: &str,
        exit_code: i32,
        reason: &str,
    ) -> Result<Pod, FakeError> {
        self.lifecycle(
            ns,
            name,
            &Lifecycle::Terminated {
                exit_code,
                reason: reason.to_owned(),
                container: None,
            },
        )
    }

    /// The containers are OOM-killed (exit 137, reason `OOMKilled`): `Failed`.
    pub fn oom_kill(&self, ns: &str, name: &str) -> Result<Pod, FakeError> {
        self.terminate_pod(ns, name, 137, "OOMKilled")
    }

    /// Node-pressure eviction: `Failed`, reason `Evicted`.
    pub fn evict(&self, ns: &str, name: &str) -> Result<Pod, FakeError> {
        self.lifecycle(ns, name, &Lifecycle::Evicted { message: None })
    }

    /// Deletes a pod: `grace_seconds > 0` sets a deletionTimestamp (the pod
    /// stays until [`FakeKube::remove_pod`]); 0 removes it at once.
    pub fn delete_pod(&self, ns: &str, name: &str, grace_seconds: i64) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.delete_pod(ns, name, grace_seconds))?)
    }

    /// Removes a pod for good (DELETED).
    pub fn remove_pod(&self, ns: &str, name: &str) -> Result<Pod, FakeError> {
        Ok(self.with_state(|s| s.remove_pod(ns, name))?)
    }

    // ---- tokens ---------------------------------------------------------------

    /// Adds a projected ServiceAccount token bound to `pod` (as stored in
    /// the fake: namespace, name, UID, node and ServiceAccount), valid for
    /// `audiences` during `ttl`.
    pub fn add_pod_token(
        &self,
        token: &str,
        pod: &Pod,
        audiences: &[&str],
        ttl: Option<Duration>,
    ) -> TestToken {
        let t = TestToken {
            token: token.to_owned(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            pod_name: pod.metadata.name.clone(),
            pod_uid: pod.metadata.uid.clone(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            expires_in_seconds: ttl.map(|d| d.as_secs().max(1)),
        };
        self.add_token(t.clone());
        t
    }

    pub fn add_token(&self, token: TestToken) {
        self.with_state(|s| s.add_token(token, Instant::now()));
    }

    /// The token is expired from now on.
    pub fn expire_token(&self, token: &str) -> Result<(), FakeError> {
        Ok(self.with_state(|s| s.expire_token(token, Instant::now()))?)
    }

    // ---- faults and watch steering ------------------------------------------------

    pub fn inject(&self, fault: Fault) {
        self.with_state(|s| s.faults.push(fault));
    }

    /// Clears pending faults and releases hung requests.
    pub fn clear_faults(&self) {
        self.with_state(State::clear_faults);
        self.shared.recorded.notify_waiters();
    }

    /// Ends every open watch stream (`Close`: cleanly; `Abort`: cut).
    pub fn drop_watches(&self, mode: DropMode) {
        self.with_state(|s| s.drop_watches(mode));
    }

    /// Sends every open watch an `ERROR` 410 Expired event and ends it.
    pub fn expire_watches(&self) {
        self.with_state(State::expire_watches);
    }

    /// Drops all change history: any earlier resourceVersion is too old.
    pub fn compact(&self) {
        self.with_state(State::compact);
    }

    /// Open watches that asked for bookmarks get one now.
    pub fn send_bookmarks(&self) {
        self.with_state(State::send_bookmarks);
    }

    /// While paused, open watches deliver nothing (changes queue up).
    pub fn pause_watches(&self, paused: bool) {
        self.with_state(|s| s.pause_watches(paused));
    }

    // ---- what clients wrote ---------------------------------------------------------

    pub fn events(&self) -> Vec<RecordedEvent> {
        self.with_state(|s| s.events.clone())
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.with_state(|s| s.leases.values().cloned().collect())
    }

    pub fn stats(&self) -> Stats {
        self.with_state(|s| s.stats.clone())
    }

    /// Waits until `pred` holds on the recorded Events, up to `timeout`;
    /// returns the events either way.
    pub async fn wait_for_events(
        &self,
        timeout: Duration,
        pred: impl Fn(&[RecordedEvent]) -> bool,
    ) -> Vec<RecordedEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let events = self.events();
            if pred(&events) {
                return events;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events();
            }
        }
    }

    /// Waits until `pred` holds on the stats (e.g. a watch is open).
    pub async fn wait_for_stats(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = Instant::now() + timeout;
        let mut changes = self.shared.subscribe();
        loop {
            changes.borrow_and_update();
            let stats = self.stats();
            if pred(&stats) || Instant::now() >= deadline {
                return stats;
            }
            // Stats change without a watch tick too: poll at a short step.
            let step = Instant::now() + Duration::from_millis(20);
            let _ = tokio::time::timeout_at(step.min(deadline), changes.changed()).await;
        }
    }

    /// Stops accepting, ends watch streams, lets open requests finish
    /// (bounded), and returns when the server task has ended.
    pub async fn stop(mut self) {
        self.with_state(|s| s.drop_watches(DropMode::Close));
        self.serving.stop().await;
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // Then `serving` drops, which stops the server.
        self.shared.with(|s| s.drop_watches(DropMode::Close));
    }
}

/// A kubeconfig (YAML; strings JSON-quoted, which YAML reads as is) for a
/// cluster at `server` with bearer `token`.
pub fn kubeconfig_yaml(server: &str, token: &str, namespace: &str) -> String {
    let q = |s: &str| json!(s).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake-kube\n  cluster:\n    server: {server}\n\
         users:\n\
         - name: fake-kube\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: fake-kube\n  context:\n    cluster: fake-kube\n    user: fake-kube\n    namespace: {namespace}\n\
         current-context: fake-kube\n",
        server = q(server),
        token = q(token),
        namespace = q(namespace),
    )
}
