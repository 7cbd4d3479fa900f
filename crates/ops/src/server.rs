//! The ops endpoints (`/livez`, `/readyz`, `/healthz`, `/metrics`) and the
//! bind/serve helpers every listener uses.
//!
//! Every listener bounds its clients (DESIGN.md §5, "Listener limits"): a
//! request head must arrive within a deadline (which also closes idle
//! keep-alive connections), a connection that moves no byte for a while is
//! closed, heads are size-capped, and each listener holds at most a fixed
//! number of connections. At the cap the oldest connection with no request in
//! flight (a slow or idle client) gives way to the new one; when every
//! connection is busy the new one is closed at once, never queued. The ops
//! listener has its own, smaller cap, and the public listeners' cap is kept
//! below the process's descriptor limit, so that a flood of slow clients on
//! any port cannot make `/livez` time out and get a healthy pod restarted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct OpsState {
    health: Health,
    metrics: Metrics,
}

/// The ops router of DESIGN.md §5. Wrap it with [`crate::http::instrument`].
pub fn ops_router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(OpsState { health, metrics })
}

async fn livez(State(s): State<OpsState>) -> Response {
    let (alive, body) = s.health.live();
    let code = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn readyz(State(s): State<OpsState>) -> Response {
    let (ready, body) = s.health.ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn healthz(State(s): State<OpsState>) -> Response {
    (StatusCode::OK, Json(s.health.report())).into_response()
}

async fn metrics_text(State(s): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// A listener that could not be bound, naming the config key it came from so
/// the operator knows what to change.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key}={addr}: {source}")]
pub struct BindError {
    pub key: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The listen backlog: connections the kernel completes before the service
/// accepts them. Large, so that a burst of connections (a flood, or many
/// clients at once) does not overflow it: an overflow drops the SYN of the
/// next client, a kubelet probe included, which then waits a full second
/// for its retransmit. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr`, the value of config key `key`.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio do: a restarted service can bind at once.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| BindError { key, addr, source })
}

/// A request head (request line and headers) must arrive within this long;
/// on a keep-alive connection the clock starts again after each response, so
/// this is also the idle keep-alive timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that moves no byte either way for this long is closed (a
/// client that stopped reading its response, a stalled upload). Longer than
/// every handler timeout, so a slow handler is not cut off.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads larger than this are refused (431); also the most a
/// connection buffers, so memory per connection stays small.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The most connections a public listener (bot-bridge's API, the watcher's
/// input) holds, before the descriptor budget lowers it.
pub const PUBLIC_MAX_CONNECTIONS: usize = 512;
/// The most connections the ops listener holds: probes and scrapes need few.
pub const OPS_MAX_CONNECTIONS: usize = 128;
/// Descriptors kept out of every listener's reach: files, outbound sockets,
/// the database, notify watches.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// How one listener bounds its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once (see the module docs for what happens at the cap).
    pub max_connections: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`MAX_HEADER_BYTES`]; hyper needs at least 8192.
    pub max_header_bytes: usize,
}

impl Limits {
    /// The limits of a public listener, its cap lowered when the descriptor
    /// limit leaves less room than [`PUBLIC_MAX_CONNECTIONS`].
    pub fn public() -> Self {
        Self::with_cap(budget().public)
    }

    /// The limits of the ops listener.
    pub fn ops() -> Self {
        Self::with_cap(budget().ops)
    }

    fn with_cap(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

/// The connection caps the process's descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    public: usize,
    ops: usize,
}

/// Splits `descriptors` (the soft `RLIMIT_NOFILE`): [`RESERVED_DESCRIPTORS`]
/// stay free, the ops listener gets at most a quarter of the rest, the public
/// listener what is left, each within its default.
fn split(descriptors: u64) -> Budget {
    let usable = usize::try_from(descriptors.saturating_sub(RESERVED_DESCRIPTORS))
        .unwrap_or(usize::MAX)
        .max(8);
    let ops = OPS_MAX_CONNECTIONS.min(usable / 4).max(2);
    let public = PUBLIC_MAX_CONNECTIONS.min(usable - usable / 4).max(2);
    Budget { public, ops }
}

/// The process's budget, computed once: the soft descriptor limit is first
/// raised towards the hard one (as Go and nginx do), since the default soft
/// limit of 1024 is a relic of `select(2)`, not a policy.
fn budget() -> Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    *BUDGET.get_or_init(|| split(raise_descriptor_limit()))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 65536) and
/// returns the soft limit in force.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let wanted = hard.min(65_536);
    if wanted > soft && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).is_ok() {
        return wanted;
    }
    soft
}

/// Serves `router` on a public listener with [`Limits::public`] until
/// `shutdown` triggers (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, Limits::public()).await
}

/// Serves the ops router with [`Limits::ops`] on a thread of its own (a
/// single-threaded runtime): its own cap, so that a flood on a public port
/// cannot take the probes' connections, and its own scheduler, so that the
/// thousands of tasks of such a flood cannot delay `/livez` either (as
/// linkerd2-proxy runs its admin server).
pub async fn serve_ops(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listener = listener.into_std()?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ops-server".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        serve_with(listener, router, shutdown, Limits::ops()).await
                    })
                });
            let _ = done.send(result);
        })?;
    finished
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the ops server thread ended")))
}

/// Serves `router` within `limits` until `shutdown` triggers, then stops
/// accepting, closes idle connections, lets in-flight requests finish and
/// returns when every connection is closed (the caller bounds the drain).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::debug!(
        %addr,
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "serving"
    );
    let table = Arc::new(Table::new(limits.max_connections));
    let tasks = TaskTracker::new();
    let mut pressure = Pressure::default();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.wait() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_out_of_descriptors(&e) => {
                // The connection stays in the backlog; retrying at once would
                // spin. A short pause lets closing connections free descriptors.
                pressure.out_of_descriptors += 1;
                pressure.report(addr);
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
            // A connection reset before it was accepted, and the like.
            Err(_) => continue,
        };
        let slot = match table.admit() {
            Admission::Open(slot) => slot,
            Admission::Evicted(slot) => {
                pressure.evicted += 1;
                pressure.report(addr);
                slot
            }
            Admission::Full => {
                // Closed at once: a queued connection would hold a descriptor
                // and memory for a client the service cannot serve anyway.
                drop(stream);
                pressure.refused += 1;
                pressure.report(addr);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(serve_connection(
            stream,
            router.clone(),
            slot,
            limits,
            shutdown.clone(),
        ));
        // Let the new connection be looked at before the next accept: in a
        // burst, a request that is already complete (a probe) is then served,
        // not crowded out by the connections accepted after it.
        tokio::task::yield_now().await;
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// One connection, until it closes, times out, is evicted or shutdown
/// finds it idle.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    slot: Slot,
    limits: Limits,
    shutdown: Shutdown,
) {
    let activity = slot.activity.clone();
    // From here on this connection is read within the same poll: if it holds
    // a complete request, it is in flight before anything else runs.
    activity.looked_at();
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let evicted = slot.evict.clone();
    let slot = Arc::new(slot);
    let service = {
        let slot = slot.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let guard = slot.request();
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await;
                drop(guard);
                response
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let idle_at = activity.last() + limits.idle_timeout;
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    // Header timeouts, resets, malformed requests: the
                    // client's problem, not an operator's.
                    tracing::debug!(error = %e, "connection closed");
                }
                return;
            }
            () = evicted.cancelled() => return,
            () = shutdown.wait(), if !draining => {
                if !slot.busy() {
                    return;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(idle_at) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    tracing::debug!("connection idle; closed");
                    return;
                }
            }
        }
    }
}

/// Rate-limited warnings about a listener at its limits.
#[derive(Debug, Default)]
struct Pressure {
    refused: u64,
    evicted: u64,
    out_of_descriptors: u64,
    last_report: Option<Instant>,
}

impl Pressure {
    const EVERY: Duration = Duration::from_secs(10);

    fn report(&mut self, addr: SocketAddr) {
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return;
        }
        self.last_report = Some(now);
        tracing::warn!(
            %addr,
            refused = self.refused,
            evicted = self.evicted,
            out_of_descriptors = self.out_of_descriptors,
            "listener at its connection limit; idle connections evicted, new ones refused"
        );
        self.refused = 0;
        self.evicted = 0;
        self.out_of_descriptors = 0;
    }
}

/// The open connections of one listener.
#[derive(Debug)]
struct Table {
    cap: usize,
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    next_id: u64,
    open: HashMap<u64, ConnState>,
}

#[derive(Debug)]
struct ConnState {
    /// Requests being handled; a connection with none may be evicted.
    in_flight: usize,
    /// When the connection last became idle (accepted, or a response left).
    idle_since: Instant,
    /// Whether the server has looked at it yet (see [`Table::admit`]).
    activity: Arc<Activity>,
    evict: CancellationToken,
}

enum Admission {
    Open(Slot),
    /// Opened in place of the oldest idle connection, which is closing.
    Evicted(Slot),
    Full,
}

impl Table {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::new(TableInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableInner> {
        // Every update is one small map operation; a poisoned lock is consistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection. At the cap, the connection idle the
    /// longest gives way, preferring one the server has already looked at:
    /// a connection not looked at yet may hold a complete request (a probe)
    /// that a busy server has not got to, while one that was looked at and
    /// is still idle is a slow, silent or idle client. Only when every
    /// connection has a request in flight is the new one refused.
    fn admit(self: &Arc<Self>) -> Admission {
        let mut t = self.lock();
        let mut evicted = false;
        if t.open.len() >= self.cap {
            let oldest_idle = t
                .open
                .iter()
                .filter(|(_, c)| c.in_flight == 0)
                .min_by_key(|(id, c)| (!c.activity.was_looked_at(), c.idle_since, **id))
                .map(|(id, _)| *id);
            let Some(id) = oldest_idle else {
                return Admission::Full;
            };
            if let Some(c) = t.open.remove(&id) {
                c.evict.cancel();
            }
            evicted = true;
        }
        t.next_id += 1;
        let id = t.next_id;
        let evict = CancellationToken::new();
        let activity = Arc::new(Activity::new());
        t.open.insert(
            id,
            ConnState {
                in_flight: 0,
                idle_since: Instant::now(),
                activity: activity.clone(),
                evict: evict.clone(),
            },
        );
        let slot = Slot {
            table: self.clone(),
            id,
            evict,
            activity,
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Open(slot)
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().open.len()
    }
}

/// A connection's place in its listener's table; freed when dropped.
#[derive(Debug)]
struct Slot {
    table: Arc<Table>,
    id: u64,
    evict: CancellationToken,
    activity: Arc<Activity>,
}

impl Slot {
    fn request(&self) -> RequestGuard {
        if let Some(c) = self.table.lock().open.get_mut(&self.id) {
            c.in_flight += 1;
        }
        RequestGuard {
            table: self.table.clone(),
            id: self.id,
        }
    }

    fn busy(&self) -> bool {
        self.table
            .lock()
            .open
            .get(&self.id)
            .is_some_and(|c| c.in_flight > 0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.id);
    }
}

/// A request in flight on a connection: it cannot be evicted meanwhile.
struct RequestGuard {
    table: Arc<Table>,
    id: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(c) = self.table.lock().open.get_mut(&self.id) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if c.in_flight == 0 {
                c.idle_since = Instant::now();
            }
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it opened,
/// and whether its task has started reading it.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    looked_at: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            looked_at: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn looked_at(&self) {
        self.looked_at.store(true, Ordering::Relaxed);
    }

    fn was_looked_at(&self) -> bool {
        self.looked_at.load(Ordering::Relaxed)
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records progress in its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(cap: usize) -> Limits {
        Limits {
            max_connections: cap,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(5),
            max_header_bytes: 8192,
        }
    }

    struct TestServer {
        addr: SocketAddr,
        stop: Shutdown,
        /// Lets every `/slow` request answer.
        release: CancellationToken,
        /// One message per `/slow` request that reached its handler.
        entered: tokio::sync::mpsc::UnboundedReceiver<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start(limits: Limits) -> TestServer {
        let release = CancellationToken::new();
        let (tx, entered) = tokio::sync::mpsc::unbounded_channel();
        let r = release.clone();
        let router = Router::new().route("/livez", get(|| async { "ok" })).route(
            "/slow",
            get(move || {
                let r = r.clone();
                let _ = tx.send(());
                async move {
                    r.cancelled().await;
                    "done"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Shutdown::new();
        let task = tokio::spawn(serve_with(listener, router, stop.clone(), limits));
        TestServer {
            addr,
            stop,
            release,
            entered,
            task,
        }
    }

    async fn slow_request(srv: &mut TestServer) -> TcpStream {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), srv.entered.recv())
            .await
            .expect("the request reached its handler");
        s
    }

    /// Reads until EOF or error; `true` when the server closed the connection
    /// within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    async fn get_ok(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_slow_request_head_is_cut_off_at_the_header_timeout() {
        let srv = start(limits(16)).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "slowloris connection still open"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed() {
        let srv = start(limits(16)).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "idle keep-alive connection still open"
        );
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_idle_connection_gives_way() {
        let srv = start(limits(3)).await;
        let addr = srv.addr;
        let mut idle = Vec::new();
        for _ in 0..3 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
            idle.push(s);
        }
        // A probe still gets through, in place of the oldest slow client.
        let answer = get_ok(addr, "/livez").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(closed_within(&mut idle[0], Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_a_new_one_is_closed_at_once() {
        let mut srv = start(limits(2)).await;
        let mut first = slow_request(&mut srv).await;
        let _second = slow_request(&mut srv).await;
        let mut extra = TcpStream::connect(srv.addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let closed = tokio::time::timeout(Duration::from_millis(500), extra.read_to_end(&mut out))
            .await
            .is_ok();
        assert!(
            closed && out.is_empty(),
            "refused without an answer: {out:?}"
        );
        srv.release.cancel();
        let mut buf = String::new();
        first.read_to_string(&mut buf).await.unwrap_or_default();
        assert!(buf.contains("done"), "in-flight request completed: {buf}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_finishes_in_flight_ones() {
        let mut srv = start(limits(8)).await;
        let mut slow = slow_request(&mut srv).await;
        let mut idle = TcpStream::connect(srv.addr).await.unwrap();
        idle.write_all(b"GET /sl").await.unwrap();
        srv.stop.trigger();
        assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
        assert!(!srv.task.is_finished(), "waits for the request in flight");
        srv.release.cancel();
        let mut out = String::new();
        slow.read_to_string(&mut out).await.unwrap_or_default();
        assert!(out.contains("done"), "{out}");
        tokio::time::timeout(Duration::from_secs(2), srv.task)
            .await
            .expect("server stopped")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_ops_server_runs_on_its_own_thread_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/livez",
            get(|| async { std::thread::current().name().unwrap_or_default().to_owned() }),
        );
        let stop = Shutdown::new();
        let server = tokio::spawn(serve_ops(listener, router, stop.clone()));
        let answer = get_ok(addr, "/livez").await;
        assert!(answer.ends_with("ops-server"), "{answer}");
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(2), server)
            .await
            .expect("stopped")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn the_descriptor_budget_keeps_room_and_a_share_for_ops() {
        assert_eq!(
            split(1 << 16),
            Budget {
                public: PUBLIC_MAX_CONNECTIONS,
                ops: OPS_MAX_CONNECTIONS
            }
        );
        let small = split(256);
        assert!(
            small.public + small.ops + RESERVED_DESCRIPTORS as usize <= 256,
            "{small:?}"
        );
        assert!(small.ops >= 2 && small.public >= 2);
        let tiny = split(0);
        assert!(tiny.ops >= 2 && tiny.public >= 2);
    }

    #[test]
    fn a_connection_not_looked_at_yet_is_spared_for_one_that_was() {
        let t = Arc::new(Table::new(2));
        let Admission::Open(unread) = t.admit() else {
            panic!("room")
        };
        let Admission::Open(slow) = t.admit() else {
            panic!("room")
        };
        slow.activity.looked_at();
        let Admission::Evicted(_third) = t.admit() else {
            panic!("one gives way")
        };
        assert!(slow.evict.is_cancelled(), "the slow client gives way");
        assert!(
            !unread.evict.is_cancelled(),
            "the older unread one is spared"
        );
    }

    #[test]
    fn slots_are_freed_when_dropped() {
        let t = Arc::new(Table::new(2));
        let a = match t.admit() {
            Admission::Open(s) => s,
            _ => panic!("room"),
        };
        let _g = a.request();
        let b = match t.admit() {
            Admission::Open(s) => s,
            _ => panic!("room"),
        };
        // `a` is busy: `b` (idle) is the one that gives way.
        let c = match t.admit() {
            Admission::Evicted(s) => s,
            _ => panic!("b is idle"),
        };
        assert!(b.evict.is_cancelled() && !a.evict.is_cancelled());
        drop(b);
        assert_eq!(t.len(), 2);
        let _g2 = c.request();
        assert!(matches!(t.admit(), Admission::Full));
        drop(c);
        assert_eq!(t.len(), 1);
    }
}
