//! What the test fakes share. Each fake mirrors a different real API (its
//! routes, errors, faults and state stay its own); what is here is the
//! plumbing around them:
//!
//! - [`serve`]: the connection loop, served by hyper directly (HTTP/1.1)
//!   rather than `axum::serve`, so that a `reset` fault can close a
//!   connection without writing anything: a handler marks its response with
//!   [`ResetConnection`] and the connection service turns it into an error,
//!   on which hyper drops the connection.
//! - [`Serving`]: a spawned [`serve`] loop, stopped on request or on drop.
//! - [`one_or_many`]: the admin APIs' "one fault or a list of them" bodies.
//! - [`cli`]: the binaries' logging, listening line and signal wait.
//! - [`testing`]: starting and stopping the binaries in their own tests.

pub mod cli;
pub mod testing;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// How long open connections get to finish at shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Put in a response's extensions to close the connection instead of
/// answering.
#[derive(Debug, Clone, Copy)]
pub struct ResetConnection;

/// The error a connection service returns to make hyper drop the connection.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by fault injection")]
struct ConnectionReset;

/// Binds `addr`: the listener and the address it really got (the port when 0
/// was asked for).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Accepts connections until `shutdown` flips, then drains them for at most
/// [`DRAIN`].
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = hyper::server::conn::http1::Builder::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of fds or similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let router = router.clone();
                    async move {
                        let response = match router.oneshot(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        };
                        if response.extensions().get::<ResetConnection>().is_some() {
                            return Err(ConnectionReset);
                        }
                        Ok::<_, ConnectionReset>(response)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline");
    }
}

/// A [`serve`] loop running in a task. Dropping it tells the loop to stop
/// (in the background); [`Serving::stop`] also waits for the drain.
#[derive(Debug)]
pub struct Serving {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Serving {
    /// Spawns [`serve`] on `listener` with `router`.
    pub fn spawn(listener: TcpListener, router: Router) -> Self {
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, router, rx));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Stops accepting and waits until open connections are drained.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// One item or a list of them, as the admin APIs take faults.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// Parses a body holding one `T` or a list of them. The error says why in
/// `T`'s terms: serde's message for an untagged enum is vague, so it tries
/// one `T` for a better one.
pub fn one_or_many<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, String> {
    match serde_json::from_slice::<OneOrMany<T>>(body) {
        Ok(OneOrMany::One(t)) => Ok(vec![t]),
        Ok(OneOrMany::Many(t)) => Ok(t),
        Err(e) => Err(serde_json::from_slice::<T>(body)
            .err()
            .map_or_else(|| e.to_string(), |e| e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        n: u32,
    }

    #[test]
    fn one_or_many_takes_either_and_names_what_is_wrong() {
        assert_eq!(one_or_many::<Item>(br#"{"n":1}"#), Ok(vec![Item { n: 1 }]));
        assert_eq!(
            one_or_many::<Item>(br#"[{"n":1},{"n":2}]"#),
            Ok(vec![Item { n: 1 }, Item { n: 2 }])
        );
        let e = one_or_many::<Item>(br#"{"m":1}"#).unwrap_err();
        assert!(e.contains("missing field `n`"), "{e}");
    }
}
