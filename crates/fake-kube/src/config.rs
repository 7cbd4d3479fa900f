//! How a fake is set up.

use std::net::SocketAddr;
use std::time::Duration;

/// The fake's settings. [`FakeKubeConfig::default`] is what tests want.
#[derive(Debug, Clone)]
pub struct FakeKubeConfig {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// The bearer token every API request must carry (the kubeconfig's user
    /// token). `/_admin`, `/healthz` and `/version` need none.
    pub client_token: String,
    /// Pod changes kept for watches to resume from. Older ones are compacted:
    /// a watch from before them gets `410 Expired`.
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` stays open (the apiserver
    /// picks 30 to 60 minutes).
    pub default_watch_timeout: Duration,
    /// The audiences a TokenReview without `spec.audiences` is checked
    /// against (the apiserver's `--api-audiences`).
    pub api_audiences: Vec<String>,
}

/// The audience of a token minted for the apiserver itself.
pub const DEFAULT_API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

impl Default for FakeKubeConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_token: "fake-kube-client-token".to_owned(),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(60),
            default_watch_timeout: Duration::from_secs(1800),
            api_audiences: vec![DEFAULT_API_AUDIENCE.to_owned()],
        }
    }
}
