//! Discord's rate limits: header parsing and a limiter that waits *before* a
//! request would be refused.
//!
//! Discord advertises per-route buckets in `X-RateLimit-*` headers, enforces a
//! global 50 requests/s per bot, and silently limits webhook messages per channel
//! (about 30 per minute) without advertising it. A 429 costs a round trip and
//! counts towards Cloudflare's invalid-request ban (10,000 per 10 minutes), so the
//! [`Limiter`] paces requests from what it has learnt and only falls back on 429
//! handling when its knowledge was stale. It uses `tokio::time` only, so its tests
//! run on a paused clock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// Who a 429 applies to (`X-RateLimit-Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// This bot or webhook on this route.
    User,
    /// Everything this bot sends.
    Global,
    /// A resource shared with others (e.g. a busy channel); does not count against us.
    Shared,
}

impl Scope {
    /// The header value and the `scope` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Global => "global",
            Scope::Shared => "shared",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "user" => Some(Scope::User),
            "global" => Some(Scope::Global),
            "shared" => Some(Scope::Shared),
            _ => None,
        }
    }
}

/// What a response's rate-limit headers said. Every field is optional because
/// fakes, proxies and some routes send none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests the bucket allows per window (`X-RateLimit-Limit`).
    pub limit: Option<u32>,
    /// Requests left in the current window (`X-RateLimit-Remaining`).
    pub remaining: Option<u32>,
    /// Time until the window resets (`X-RateLimit-Reset-After`, float seconds).
    pub reset_after: Option<Duration>,
    /// Discord's opaque bucket id (`X-RateLimit-Bucket`); routes sharing it share limits.
    pub bucket: Option<String>,
    /// Who a 429 applies to (`X-RateLimit-Scope`).
    pub scope: Option<Scope>,
    /// Whether a 429 is the global limit (`X-RateLimit-Global: true`).
    pub global: bool,
    /// How long to wait after a 429 (`Retry-After`, seconds).
    pub retry_after: Option<Duration>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Seconds as Discord writes them ("1", "0.25", "64.57"); negative, NaN or huge
/// values are ignored rather than trusted.
fn seconds(s: &str) -> Option<Duration> {
    s.trim()
        .parse::<f64>()
        .ok()
        .and_then(|f| Duration::try_from_secs_f64(f).ok())
}

/// Reads Discord's rate-limit headers; malformed values are treated as absent.
pub fn parse_headers(h: &HeaderMap) -> RateLimitHeaders {
    RateLimitHeaders {
        limit: header(h, "x-ratelimit-limit").and_then(|v| v.parse().ok()),
        remaining: header(h, "x-ratelimit-remaining").and_then(|v| v.parse().ok()),
        reset_after: header(h, "x-ratelimit-reset-after").and_then(seconds),
        bucket: header(h, "x-ratelimit-bucket")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        scope: header(h, "x-ratelimit-scope").and_then(Scope::parse),
        global: header(h, "x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        retry_after: header(h, "retry-after").and_then(seconds),
    }
}

/// `retry_after` (float seconds) from a 429 body, which is more precise than the
/// `Retry-After` header (rounded up to whole seconds).
pub fn retry_after_from_body(body: &[u8]) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let secs = value.get("retry_after")?.as_f64()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// `global` from a 429 body (Discord sets it there as well as in the header).
pub fn global_from_body(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("global")?.as_bool())
        .unwrap_or(false)
}

/// Discord's global limit per bot, requests per second.
pub const DEFAULT_GLOBAL_PER_SECOND: u32 = 50;
/// Webhook messages per channel per minute that Discord accepts without a 429.
pub const DEFAULT_CHANNEL_MESSAGES_PER_MINUTE: u32 = 30;
/// The window of the per-channel message limit.
pub const CHANNEL_WINDOW: Duration = Duration::from_secs(60);
const GLOBAL_WINDOW: Duration = Duration::from_secs(1);
/// Wait after a 429 that named no duration.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Above this many tracked routes or channels, idle entries are forgotten.
const PRUNE_ABOVE: usize = 4096;

/// How a [`Limiter`] paces requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Requests per second over all routes (Discord: 50 per bot). 0 disables it.
    pub global_per_second: u32,
    /// Messages per channel per 60 s for [`Limiter::acquire_message`]; `None`
    /// disables the per-channel window.
    pub channel_messages_per_minute: Option<u32>,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            global_per_second: DEFAULT_GLOBAL_PER_SECOND,
            channel_messages_per_minute: Some(DEFAULT_CHANNEL_MESSAGES_PER_MINUTE),
        }
    }
}

/// What the limiter knows about one route's bucket.
#[derive(Debug, Default)]
struct Bucket {
    /// Window size last advertised; restores `remaining` when the window resets.
    limit: Option<u32>,
    /// Requests left in the window: the server's last word minus what we sent since.
    remaining: Option<u32>,
    /// When the advertised window resets.
    reset_at: Option<Instant>,
    /// Set by a 429 on this route: nothing goes out before.
    blocked_until: Option<Instant>,
}

impl Bucket {
    fn idle(&self, now: Instant) -> bool {
        self.reset_at.is_none_or(|t| t <= now) && self.blocked_until.is_none_or(|t| t <= now)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Send times within the last second, oldest first.
    global_sends: VecDeque<Instant>,
    /// Set by a global 429: nothing goes out before.
    global_blocked_until: Option<Instant>,
    buckets: HashMap<String, Bucket>,
    /// Per-channel message send times within the last minute, oldest first.
    channels: HashMap<String, VecDeque<Instant>>,
}

/// Paces requests so that none exceeds a known limit. Cheap to clone (shared
/// state); use one per client so all its requests are counted together.
#[derive(Debug, Clone)]
pub struct Limiter {
    config: LimiterConfig,
    state: Arc<Mutex<State>>,
}

/// Drops entries older than `window` and returns when one more send is allowed,
/// or `None` when it is allowed now.
fn window_ready(
    sends: &mut VecDeque<Instant>,
    now: Instant,
    window: Duration,
    max: u32,
) -> Option<Instant> {
    while sends.front().is_some_and(|t| *t + window <= now) {
        sends.pop_front();
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if sends.len() < max {
        return None;
    }
    // The send that must leave the window first.
    sends.get(sends.len() - max).map(|t| *t + window)
}

impl Limiter {
    pub fn new(config: LimiterConfig) -> Self {
        Self {
            config,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a
        // plain assignment or push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request on `route` (e.g. `"webhook:{id}"` or
    /// `"POST /channels/{id}/webhooks"` with the id filled in) stays within the
    /// route's bucket and the global budget, then counts it as sent.
    pub async fn acquire(&self, route: &str) {
        self.wait(route, None).await;
    }

    /// [`Limiter::acquire`] for a request that posts a message in the channel
    /// `channel_key`: also keeps within the unadvertised per-channel window.
    pub async fn acquire_message(&self, route: &str, channel_key: &str) {
        self.wait(route, Some(channel_key)).await;
    }

    /// Takes a permit if one is available now; otherwise returns how long until
    /// one may be. Lets a sender coalesce work while it would have to wait.
    pub fn try_acquire(&self, route: &str, channel_key: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.state();
        match self.ready_at(&mut state, now, route, channel_key) {
            None => {
                self.reserve(&mut state, now, route, channel_key);
                Ok(())
            }
            Some(at) => Err(at - now),
        }
    }

    async fn wait(&self, route: &str, channel_key: Option<&str>) {
        loop {
            match self.try_acquire(route, channel_key) {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    fn ready_at(
        &self,
        state: &mut State,
        now: Instant,
        route: &str,
        channel_key: Option<&str>,
    ) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut later = |t: Option<Instant>| {
            if let Some(t) = t.filter(|t| *t > now) {
                at = Some(at.map_or(t, |a| a.max(t)));
            }
        };
        later(state.global_blocked_until);
        if self.config.global_per_second > 0 {
            later(window_ready(
                &mut state.global_sends,
                now,
                GLOBAL_WINDOW,
                self.config.global_per_second,
            ));
        }
        if let Some(bucket) = state.buckets.get_mut(route) {
            later(bucket.blocked_until);
            if bucket.reset_at.is_some_and(|t| t <= now) {
                // A new window: the advertised limit applies again.
                bucket.reset_at = None;
                bucket.remaining = bucket.limit;
            }
            if bucket.remaining == Some(0) {
                // Without a known reset, wait a short while for one, then
                // restore the limit: answers without headers (a 5xx outage)
                // must not leave the bucket exhausted for ever.
                let reset = *bucket.reset_at.get_or_insert(now + DEFAULT_RETRY_AFTER);
                later(Some(reset));
            }
        }
        if let (Some(key), Some(max)) = (channel_key, self.config.channel_messages_per_minute) {
            if let Some(sends) = state.channels.get_mut(key) {
                later(window_ready(sends, now, CHANNEL_WINDOW, max.max(1)));
            }
        }
        at
    }

    fn reserve(&self, state: &mut State, now: Instant, route: &str, channel_key: Option<&str>) {
        if self.config.global_per_second > 0 {
            state.global_sends.push_back(now);
        }
        if let Some(bucket) = state.buckets.get_mut(route) {
            bucket.remaining = bucket.remaining.map(|r| r.saturating_sub(1));
        }
        if let (Some(key), Some(_)) = (channel_key, self.config.channel_messages_per_minute) {
            if !state.channels.contains_key(key) && state.channels.len() >= PRUNE_ABOVE {
                state
                    .channels
                    .retain(|_, sends| sends.back().is_some_and(|t| *t + CHANNEL_WINDOW > now));
            }
            state
                .channels
                .entry(key.to_owned())
                .or_default()
                .push_back(now);
        }
    }

    /// Records what a response's headers said about `route`'s bucket.
    pub fn update(&self, route: &str, h: &RateLimitHeaders) {
        if h.remaining.is_none() && h.reset_after.is_none() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        if !state.buckets.contains_key(route) && state.buckets.len() >= PRUNE_ABOVE {
            state.buckets.retain(|_, b| !b.idle(now));
        }
        let bucket = state.buckets.entry(route.to_owned()).or_default();
        if h.limit.is_some() {
            bucket.limit = h.limit;
        }
        if let Some(remaining) = h.remaining {
            bucket.remaining = Some(remaining);
        }
        if let Some(reset_after) = h.reset_after {
            bucket.reset_at = Some(now + reset_after);
        }
    }

    /// Records a 429: blocks `route` (or every route, for a global limit) for the
    /// `retry_after` the response named (the caller fills it from the body when
    /// the header is missing).
    pub fn on_429(&self, route: &str, h: &RateLimitHeaders) {
        let wait = h
            .retry_after
            .or(h.reset_after)
            .unwrap_or(DEFAULT_RETRY_AFTER);
        let until = Instant::now() + wait;
        let mut state = self.state();
        if h.global || h.scope == Some(Scope::Global) {
            state.global_blocked_until =
                Some(state.global_blocked_until.map_or(until, |t| t.max(until)));
        } else {
            let bucket = state.buckets.entry(route.to_owned()).or_default();
            bucket.blocked_until = Some(bucket.blocked_until.map_or(until, |t| t.max(until)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_discord_headers() {
        let h = headers(&[
            ("X-RateLimit-Limit", "5"),
            ("X-RateLimit-Remaining", "0"),
            ("X-RateLimit-Reset-After", "1.25"),
            ("X-RateLimit-Bucket", "abcd1234"),
            ("X-RateLimit-Scope", "shared"),
            ("X-RateLimit-Global", "true"),
            ("Retry-After", "2"),
        ]);
        assert_eq!(
            parse_headers(&h),
            RateLimitHeaders {
                limit: Some(5),
                remaining: Some(0),
                reset_after: Some(Duration::from_millis(1250)),
                bucket: Some("abcd1234".into()),
                scope: Some(Scope::Shared),
                global: true,
                retry_after: Some(Duration::from_secs(2)),
            }
        );
    }

    #[test]
    fn missing_or_malformed_headers_are_absent() {
        assert_eq!(
            parse_headers(&HeaderMap::new()),
            RateLimitHeaders::default()
        );
        let h = headers(&[
            ("x-ratelimit-limit", "-1"),
            ("x-ratelimit-reset-after", "NaN"),
            ("x-ratelimit-scope", "galaxy"),
            ("x-ratelimit-global", "yes"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(parse_headers(&h), RateLimitHeaders::default());
    }

    #[test]
    fn retry_after_comes_from_the_body() {
        let body =
            br#"{"message":"You are being rate limited.","retry_after":0.651,"global":true}"#;
        assert_eq!(
            retry_after_from_body(body),
            Some(Duration::from_millis(651))
        );
        assert!(global_from_body(body));
        assert_eq!(retry_after_from_body(b"not json"), None);
        assert_eq!(retry_after_from_body(br#"{"retry_after":-3}"#), None);
        assert!(!global_from_body(b"{}"));
    }

    /// A fixed-window bucket as Discord runs it; panics on what would be a 429.
    struct FakeBucket {
        limit: u32,
        window: Duration,
        started: Option<Instant>,
        used: u32,
    }

    impl FakeBucket {
        fn hit(&mut self, now: Instant) -> RateLimitHeaders {
            let start = match self.started {
                Some(s) if now < s + self.window => s,
                _ => {
                    self.used = 0;
                    self.started = Some(now);
                    now
                }
            };
            self.used += 1;
            assert!(
                self.used <= self.limit,
                "request {} in window would be a 429",
                self.used
            );
            RateLimitHeaders {
                limit: Some(self.limit),
                remaining: Some(self.limit - self.used),
                reset_after: Some(start + self.window - now),
                ..RateLimitHeaders::default()
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_never_exceeded() {
        let limiter = Limiter::new(LimiterConfig::default());
        let mut server = FakeBucket {
            limit: 5,
            window: Duration::from_secs(2),
            started: None,
            used: 0,
        };
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..100 {
            limiter.acquire_message("webhook:1", "channel:1").await;
            let now = Instant::now();
            sent.push(now);
            limiter.update("webhook:1", &server.hit(now));
        }
        for pair in sent.windows(31) {
            assert!(
                pair[30] - pair[0] >= CHANNEL_WINDOW,
                "more than 30 messages in 60 s"
            );
        }
        // Not needlessly slow either: three full minutes and the start of a fourth.
        let elapsed = sent[99] - start;
        assert!(elapsed >= Duration::from_secs(180), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(200), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_without_headers_never_exhaust_a_bucket_for_ever() {
        let limiter = Limiter::new(LimiterConfig {
            global_per_second: 0,
            channel_messages_per_minute: None,
        });
        let mut server = FakeBucket {
            limit: 5,
            window: Duration::from_secs(2),
            started: None,
            used: 0,
        };
        limiter.acquire("webhook:1").await;
        limiter.update("webhook:1", &server.hit(Instant::now()));
        tokio::time::advance(Duration::from_secs(3)).await;
        // A 5xx outage: every answer lacks rate-limit headers.
        for _ in 0..20 {
            tokio::time::timeout(Duration::from_secs(5), limiter.acquire("webhook:1"))
                .await
                .expect("the bucket resets even without headers");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn advertised_bucket_is_respected_without_channel_limit() {
        let limiter = Limiter::new(LimiterConfig {
            global_per_second: 50,
            channel_messages_per_minute: None,
        });
        let mut server = FakeBucket {
            limit: 5,
            window: Duration::from_secs(2),
            started: None,
            used: 0,
        };
        let start = Instant::now();
        for _ in 0..20 {
            limiter.acquire_message("webhook:1", "channel:1").await;
            limiter.update("webhook:1", &server.hit(Instant::now()));
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn global_budget_holds_over_all_routes() {
        let limiter = Limiter::new(LimiterConfig {
            global_per_second: 50,
            channel_messages_per_minute: None,
        });
        let mut sent = Vec::new();
        for i in 0..175 {
            limiter.acquire(&format!("route:{i}")).await;
            sent.push(Instant::now());
        }
        for pair in sent.windows(51) {
            assert!(pair[50] - pair[0] >= Duration::from_secs(1));
        }
        assert_eq!(sent[174] - sent[0], Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn global_429_blocks_every_route() {
        let limiter = Limiter::new(LimiterConfig::default());
        let start = Instant::now();
        limiter.on_429(
            "a",
            &RateLimitHeaders {
                global: true,
                retry_after: Some(Duration::from_secs(5)),
                ..RateLimitHeaders::default()
            },
        );
        limiter.acquire("b").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn route_429_blocks_only_that_route() {
        let limiter = Limiter::new(LimiterConfig::default());
        let start = Instant::now();
        limiter.on_429(
            "a",
            &RateLimitHeaders {
                scope: Some(Scope::User),
                reset_after: Some(Duration::from_millis(700)),
                ..RateLimitHeaders::default()
            },
        );
        limiter.acquire("b").await;
        assert_eq!(Instant::now(), start);
        assert_eq!(
            limiter.try_acquire("a", None),
            Err(Duration::from_millis(700))
        );
        limiter.acquire("a").await;
        assert_eq!(Instant::now() - start, Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_window() {
        let limiter = Limiter::new(LimiterConfig {
            global_per_second: 0,
            channel_messages_per_minute: Some(3),
        });
        let start = Instant::now();
        let tasks: Vec<_> = (0..7)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire_message("w", "c").await;
                    Instant::now() - start
                })
            })
            .collect();
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        let minute = CHANNEL_WINDOW;
        assert_eq!(
            at,
            [
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                minute,
                minute,
                minute,
                minute * 2
            ]
        );
    }
}
