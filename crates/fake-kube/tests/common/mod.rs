//! What every test needs: a fake cluster and a real kube client built from
//! the kubeconfig it writes, the way production code builds one.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fake_kube::FakeKube;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub fake: FakeKube,
    pub client: Client,
    /// Holds the kubeconfig file.
    pub dir: tempfile::TempDir,
}

/// The kube `Config` from a kubeconfig file, as bot-bridge will load it.
pub async fn config_from(path: &std::path::Path) -> Config {
    let kubeconfig = Kubeconfig::read_from(path).expect("kubeconfig parses");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable")
}

pub async fn cluster() -> Cluster {
    let fake = FakeKube::start().await.expect("fake-kube starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = fake
        .kubeconfig(dir.path().join("kubeconfig"))
        .expect("kubeconfig written");
    let client = Client::try_from(config_from(&path).await).expect("client builds");
    Cluster { fake, client, dir }
}

/// Waits until `pred` holds for the value in `rx`, failing the test after
/// [`DEADLINE`] with `what`.
pub async fn wait_for<T: Clone + std::fmt::Debug>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    what: &str,
    pred: impl FnMut(&T) -> bool,
) -> T {
    let outcome = tokio::time::timeout(DEADLINE, rx.wait_for(pred))
        .await
        .map(|r| r.map(|v| v.clone()));
    match outcome {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("{what}: the watcher task ended"),
        Err(_) => panic!(
            "{what}: not within {DEADLINE:?}; last seen {:?}",
            *rx.borrow()
        ),
    }
}
