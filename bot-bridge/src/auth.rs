//! Who is calling the runs API, proven two ways:
//!
//! - `API_TOKEN` (operators, tools, and every watcher outside Kubernetes);
//! - a projected ServiceAccount token of the calling pod, checked with a
//!   TokenReview (`authentication.k8s.io/v1`) when `TOKEN_REVIEW_AUDIENCE` is
//!   set. The review names the pod (namespace from the username, name and UID
//!   from the bound-token `extra` fields): the caller becomes
//!   [`Caller::Pod`](crate::access::Caller::Pod), which may act on its own run
//!   only.
//!
//! Successful reviews are cached by a hash of the token, never longer than the
//! token lives, so a TokenReview outage only hurts tokens not seen before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use ops::metrics::{Metrics, MetricsError};
use ops::Secret;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::reconcile::{KubeSetupError, KubeSource};
use crate::store::PodIdentity;

/// Bound of one TokenReview call (the kube client's retries are off).
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a review is cached when the token's expiry cannot be read.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// The longest a review is cached, whatever the token says: a deleted pod's
/// token stops working within this.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most reviews cached (one per live token: a few per agent pod).
pub const CACHE_CAPACITY: usize = 10_000;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

/// `bridge_auth_total{method}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiToken,
    RunToken,
    PodToken,
}

impl AuthMethod {
    pub const ALL: [Self; 3] = [Self::ApiToken, Self::RunToken, Self::PodToken];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiToken => "api_token",
            Self::RunToken => "run_token",
            Self::PodToken => "pod_token",
        }
    }
}

/// `bridge_auth_total{outcome}`: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Ok,
    /// 401: no, a wrong, an expired or a wrong-audience credential.
    Unauthenticated,
    /// 403: a valid credential for something else (another run, listing).
    Forbidden,
    /// 503: the TokenReview API could not answer.
    Unavailable,
}

impl AuthOutcome {
    pub const ALL: [Self; 4] = [
        Self::Ok,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
        }
    }
}

/// `bridge_auth_total{method,outcome}`, every pair registered at start-up.
#[derive(Clone, Debug)]
pub struct AuthMetrics {
    total: IntCounterVec,
}

impl AuthMetrics {
    pub fn new(metrics: &Metrics) -> Result<Self, MetricsError> {
        let total = metrics.counter_vec(
            "bridge_auth_total",
            "Runs API authentication decisions by method (api_token, run_token, pod_token) \
             and outcome (ok, unauthenticated, forbidden, unavailable).",
            &["method", "outcome"],
        )?;
        for m in AuthMethod::ALL {
            for o in AuthOutcome::ALL {
                total.with_label_values(&[m.as_str(), o.as_str()]);
            }
        }
        Ok(Self { total })
    }

    /// Counts one decision (and logs the refusals without the credential).
    pub fn record(&self, method: AuthMethod, outcome: AuthOutcome) {
        self.total
            .with_label_values(&[method.as_str(), outcome.as_str()])
            .inc();
    }

    pub fn count(&self, method: AuthMethod, outcome: AuthOutcome) -> u64 {
        self.total
            .with_label_values(&[method.as_str(), outcome.as_str()])
            .get()
    }
}

/// Why a pod token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The token is not valid for us (401). The reason never holds the token.
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    /// The TokenReview API did not answer usefully (503).
    #[error("TokenReview unavailable: {0}")]
    Unavailable(String),
}

/// Cached reviews keyed by SHA-256 of the token, each with its deadline.
#[derive(Debug)]
pub struct ReviewCache {
    entries: HashMap<[u8; 32], (PodIdentity, Instant)>,
    capacity: usize,
}

impl ReviewCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn key(token: &Secret<String>) -> [u8; 32] {
        Sha256::digest(token.expose().as_bytes()).into()
    }

    /// The cached identity, if its deadline has not passed (expired entries
    /// are dropped on the way).
    pub fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<PodIdentity> {
        match self.entries.get(key) {
            Some((pod, until)) if *until > now => Some(pod.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores a review until `until`. When full, expired entries go first,
    /// then the one that expires soonest.
    pub fn insert(&mut self, key: [u8; 32], pod: PodIdentity, until: Instant, now: Instant) {
        if until <= now {
            return;
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, u)| *u > now);
            if self.entries.len() >= self.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, u))| *u)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (pod, until));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The `exp` claim of a JWT, read without verifying it (the TokenReview
/// verified the token; this only bounds how long its answer is reused).
pub fn jwt_exp(token: &str) -> Option<i64> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

/// How long a fresh review of `token` may be reused: until the token's `exp`
/// when readable, else [`DEFAULT_CACHE_TTL`]; never more than
/// [`MAX_CACHE_TTL`].
pub fn cache_ttl(token: &str, now_unix: i64) -> Duration {
    let ttl = match jwt_exp(token) {
        Some(exp) => Duration::from_secs(u64::try_from(exp.saturating_sub(now_unix)).unwrap_or(0)),
        None => DEFAULT_CACHE_TTL,
    };
    ttl.min(MAX_CACHE_TTL)
}

/// Reads the pod out of a TokenReview answer for `audience`.
pub fn pod_of(review: &TokenReview, audience: &str) -> Result<PodIdentity, ReviewError> {
    let unauth = |m: &str| Err(ReviewError::Unauthenticated(m.to_owned()));
    let Some(status) = &review.status else {
        return unauth("the review has no status");
    };
    if status.authenticated != Some(true) {
        // The apiserver's `error` says why (expired, audience); it never
        // contains the token.
        return Err(ReviewError::Unauthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| x == audience))
    {
        return unauth("the token is not for this audience");
    }
    let Some(user) = &status.user else {
        return unauth("the review names no user");
    };
    let namespace = user
        .username
        .as_deref()
        .and_then(|u| u.strip_prefix(SA_PREFIX))
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _sa)| ns.to_owned())
        .filter(|ns| !ns.is_empty());
    let Some(namespace) = namespace else {
        return unauth("not a ServiceAccount token");
    };
    let extra = |k: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(k))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    match (extra(POD_NAME), extra(POD_UID)) {
        (Some(name), Some(uid)) => Ok(PodIdentity {
            namespace,
            name,
            uid,
        }),
        _ => unauth("the token is not bound to a pod"),
    }
}

/// Checks pod tokens with TokenReviews, through a cache.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    timeout: Duration,
    cache: Mutex<ReviewCache>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// A client for requests that must answer fast: no retries (kube retries
/// 429/503 itself otherwise, for seconds), every call bounded.
pub async fn review_client(source: &KubeSource) -> Result<kube::Client, KubeSetupError> {
    let mut config = crate::reconcile::kube_config(source).await?;
    config.default_retry = false;
    config.read_timeout = Some(REVIEW_TIMEOUT);
    config.connect_timeout = Some(REVIEW_TIMEOUT);
    kube::Client::try_from(config).map_err(|e| KubeSetupError::Client(e.to_string()))
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: String) -> Self {
        Self {
            client,
            audience,
            timeout: REVIEW_TIMEOUT,
            cache: Mutex::new(ReviewCache::new(CACHE_CAPACITY)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReviewCache> {
        // A poisoned cache is still a valid map (no invariant spans a panic).
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pod `token` belongs to: from the cache, else from a TokenReview.
    pub async fn review(&self, token: &Secret<String>) -> Result<PodIdentity, ReviewError> {
        let key = ReviewCache::key(token);
        if let Some(pod) = self.cache().get(&key, Instant::now()) {
            return Ok(pod);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![self.audience.clone()]),
                token: Some(token.expose().clone()),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review)).await;
        let answer = match answer {
            Err(_) => return Err(ReviewError::Unavailable("timed out".into())),
            Ok(Err(kube::Error::Api(s))) => {
                return Err(ReviewError::Unavailable(format!(
                    "the API answered {} {}",
                    s.code, s.reason
                )))
            }
            Ok(Err(e)) => return Err(ReviewError::Unavailable(kube_error_kind(&e))),
            Ok(Ok(r)) => r,
        };
        let pod = pod_of(&answer, &self.audience)?;
        let ttl = cache_ttl(token.expose(), crate::runs::now_unix());
        let now = Instant::now();
        self.cache().insert(key, pod.clone(), now + ttl, now);
        Ok(pod)
    }
}

impl crate::app::AppState {
    /// Whether `caller` may act on `run`: a pod on the runs bound to it, any
    /// other caller by the run's token (runs from before run tokens: anyone
    /// behind `API_TOKEN`). Counts `run_token` decisions and pod refusals
    /// (a pod's `ok` was counted when its token was reviewed).
    pub async fn authorize(
        &self,
        run: &crate::store::RunRecord,
        caller: &crate::access::Caller,
    ) -> Result<(), crate::runs::RunsError> {
        let auth = &self.metrics().auth;
        if let Some(pod) = caller.pod() {
            let bound = self
                .stored(self.store().run_pod(run.run_id.clone()))
                .await?;
            if bound.as_ref() == Some(&pod) {
                return Ok(());
            }
            auth.record(AuthMethod::PodToken, AuthOutcome::Forbidden);
            return Err(crate::runs::RunsError::Forbidden(
                "this run is not bound to the calling pod".into(),
            ));
        }
        match &run.token_hash {
            Some(hash) if caller.owns(hash) => {
                auth.record(AuthMethod::RunToken, AuthOutcome::Ok);
                Ok(())
            }
            Some(_) => {
                auth.record(AuthMethod::RunToken, AuthOutcome::Forbidden);
                Err(crate::runs::RunsError::Forbidden(format!(
                    "this run was created by another caller; present its run token in {}",
                    crate::access::RUN_TOKEN_HEADER
                )))
            }
            None => Ok(()),
        }
    }
}

/// A short description of a client error that cannot carry the request body
/// (the token): its kind only.
fn kube_error_kind(e: &kube::Error) -> String {
    match e {
        kube::Error::HyperError(_) | kube::Error::Service(_) => "connection failed".into(),
        kube::Error::SerdeError(_) => "unreadable answer".into(),
        _ => "client error".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    fn pod(n: &str) -> PodIdentity {
        PodIdentity {
            namespace: "agents".into(),
            name: n.into(),
            uid: format!("uid-{n}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cache_entries_expire_and_the_cache_is_bounded() {
        let mut c = ReviewCache::new(2);
        let now = Instant::now();
        let k = |s: &str| ReviewCache::key(&Secret::new(s.to_owned()));
        c.insert(k("a"), pod("a"), now + Duration::from_secs(10), now);
        assert_eq!(c.get(&k("a"), now), Some(pod("a")));
        assert_eq!(c.get(&k("a"), now + Duration::from_secs(10)), None);
        assert!(c.is_empty(), "an expired entry is dropped when read");
        // Already expired: not stored.
        c.insert(k("x"), pod("x"), now, now);
        assert!(c.is_empty());
        c.insert(k("a"), pod("a"), now + Duration::from_secs(30), now);
        c.insert(k("b"), pod("b"), now + Duration::from_secs(20), now);
        c.insert(k("c"), pod("c"), now + Duration::from_secs(40), now);
        assert_eq!(c.len(), 2, "bounded");
        assert_eq!(c.get(&k("b"), now), None, "the soonest to expire went");
        assert_eq!(c.get(&k("c"), now), Some(pod("c")));
        // Expired entries make room before live ones.
        let later = now + Duration::from_secs(35);
        c.insert(k("d"), pod("d"), later + Duration::from_secs(5), later);
        assert_eq!(c.get(&k("c"), later), Some(pod("c")));
        assert_eq!(c.get(&k("d"), later), Some(pod("d")));
    }

    fn jwt(claims: serde_json::Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(claims.to_string())
        )
    }

    #[test]
    fn the_cache_lives_no_longer_than_the_token() {
        let now = 1_000_000;
        let t = jwt(serde_json::json!({"exp": now + 42}));
        assert_eq!(jwt_exp(&t), Some(now + 42));
        assert_eq!(cache_ttl(&t, now), Duration::from_secs(42));
        assert_eq!(
            cache_ttl(&jwt(serde_json::json!({"exp": now - 5})), now),
            Duration::ZERO
        );
        assert_eq!(
            cache_ttl(&jwt(serde_json::json!({"exp": now + 86_400})), now),
            MAX_CACHE_TTL
        );
        for opaque in ["tok-a", "a.b.c", "a.b", &jwt(serde_json::json!({"sub": 1}))] {
            assert_eq!(cache_ttl(opaque, now), DEFAULT_CACHE_TTL, "{opaque}");
        }
    }

    fn review(authenticated: bool, audiences: &[&str], user: &str, pod: bool) -> TokenReview {
        let mut extra = BTreeMap::new();
        if pod {
            extra.insert(POD_NAME.to_owned(), vec!["agent-1".to_owned()]);
            extra.insert(POD_UID.to_owned(), vec!["u-1".to_owned()]);
        }
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.iter().map(|s| (*s).to_owned()).collect()),
                error: (!authenticated).then(|| "token has expired".to_owned()),
                user: Some(UserInfo {
                    username: Some(user.to_owned()),
                    extra: Some(extra),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    fn caller(name: &str, uid: &str) -> crate::access::Caller {
        crate::access::Caller::Pod {
            namespace: "agents".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[tokio::test]
    async fn a_pod_owns_the_run_it_created_and_nothing_else() {
        use crate::access::Caller;
        use crate::runs::{AttemptValue, NewRun, RunsError};
        let (state, _) = crate::app::fixture::state(crate::app::fixture::settings());
        let new_run = |short: &str| NewRun {
            task_id: "t".into(),
            attempt: AttemptValue::Number(1),
            short_id: short.into(),
            input_url: None,
            heartbeats: false,
        };
        let a = caller("agent-a", "uid-a");
        let (run_a, created) = state.provision(new_run("a"), &a).await.unwrap();
        assert!(created);
        let stored = state
            .store()
            .get_run(run_a.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            state.store().run_pod(run_a.run_id.clone()).await.unwrap(),
            a.pod(),
            "bound to the creating pod"
        );
        assert!(state.authorize(&stored, &a).await.is_ok());
        // Its own retry gets the run again.
        let (again, created) = state.provision(new_run("a"), &a).await.unwrap();
        assert!(!created);
        assert_eq!(again.run_id, run_a.run_id);
        // Another pod, the same pod name with another UID (a re-created pod),
        // and a run-token caller are all refused.
        for other in [
            caller("agent-b", "uid-b"),
            caller("agent-a", "uid-a2"),
            Caller::Anonymous,
        ] {
            assert!(
                matches!(
                    state.authorize(&stored, &other).await,
                    Err(RunsError::Forbidden(_))
                ),
                "{other:?}"
            );
            assert!(matches!(
                state.provision(new_run("a"), &other).await,
                Err(RunsError::Forbidden(_))
            ));
            assert!(matches!(
                state.complete(&run_a.run_id, None, &other).await,
                Err(RunsError::Forbidden(_))
            ));
            assert!(matches!(
                state.heartbeat(&run_a.run_id, &other).await,
                Err(RunsError::Forbidden(_))
            ));
        }
        // A run created behind API_TOKEN (no bound pod) is no pod's.
        let (run_t, _) = state
            .provision(new_run("t"), &Caller::Anonymous)
            .await
            .unwrap();
        let stored_t = state
            .store()
            .get_run(run_t.run_id.clone())
            .await
            .unwrap()
            .unwrap();
        assert!(state.authorize(&stored_t, &a).await.is_err());
        assert!(state.complete(&run_a.run_id, None, &a).await.is_ok());
        let auth = &state.metrics().auth;
        assert!(auth.count(AuthMethod::PodToken, AuthOutcome::Forbidden) >= 9);
    }

    #[test]
    fn the_pod_comes_from_the_review() {
        let sa = "system:serviceaccount:agents:agent";
        assert_eq!(
            pod_of(&review(true, &["agentmon"], sa, true), "agentmon"),
            Ok(PodIdentity {
                namespace: "agents".into(),
                name: "agent-1".into(),
                uid: "u-1".into()
            })
        );
        for (r, why) in [
            (review(false, &[], sa, true), "expired"),
            (review(true, &["other"], sa, true), "audience"),
            (review(true, &["agentmon"], "alice", true), "ServiceAccount"),
            (review(true, &["agentmon"], sa, false), "bound to a pod"),
            (TokenReview::default(), "no status"),
        ] {
            match pod_of(&r, "agentmon") {
                Err(ReviewError::Unauthenticated(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
