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
//!
//! Every request holds a [`Permit`] from before it is sent until its answer is
//! recorded. Nothing a request reserves is consumed for good without Discord's
//! word: an answer without rate-limit headers (a 502 from a proxy, a reset, a
//! timeout) only ends the reservation, an exhausted bucket always has a reset
//! time, and every 429 block a deadline, so a run of failures can never leave
//! the limiter waiting forever; it sends again as soon as Discord answers.
//!
//! The per-channel window counts a message from its *answer*: Discord counted
//! it on arrival, before answering, so a slot reused a window after the answer
//! is free on Discord's side whether it counts in a sliding window or in fixed
//! windows of any phase (each is a stretch of one window's length).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::Notify;
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
/// An exhausted bucket whose headers named no reset is assumed to reset after
/// this: an exhausted bucket always has an end, so nothing waits forever.
const DEFAULT_RESET_AFTER: Duration = Duration::from_secs(1);
/// The longest wait the limiter takes from a header or a 429 body. Longer
/// values (a broken proxy, `1e15`) are capped: they must not overflow the
/// clock, and no Discord limit, Cloudflare's one-hour ban included, is longer.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How often a waiter re-checks while only an unanswered request holds it up;
/// the answer (or the permit's drop) wakes it sooner.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Above this many tracked routes or channels, idle entries are forgotten.
const PRUNE_ABOVE: usize = 4096;

/// The margin kept at the edge of the per-channel window: a slot is reused
/// `window + margin` after the answer to the message that took it (1 s of
/// Discord's 60 s; proportionally less for a scaled test window). The answer
/// time already covers network latency for a sliding window and any fixed
/// window, since Discord counted the message before it answered; the margin
/// covers a server that stores times at a coarser granularity (whole seconds).
pub fn channel_margin(window: Duration) -> Duration {
    (window / 60).min(Duration::from_secs(1))
}

/// How a [`Limiter`] paces requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Requests per second over all routes (Discord: 50 per bot). 0 disables it.
    pub global_per_second: u32,
    /// Messages per channel per [`LimiterConfig::channel_window`] for
    /// [`Limiter::acquire_message`]; `None` disables the per-channel window.
    pub channel_messages_per_minute: Option<u32>,
    /// The window of the per-channel limit: [`CHANNEL_WINDOW`] on Discord;
    /// shorter only against a fake whose window is scaled down for tests.
    pub channel_window: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            global_per_second: DEFAULT_GLOBAL_PER_SECOND,
            channel_messages_per_minute: Some(DEFAULT_CHANNEL_MESSAGES_PER_MINUTE),
            channel_window: CHANNEL_WINDOW,
        }
    }
}

/// When a request may go: now, at a known time, or when an unanswered request
/// settles (its answer says how much of the bucket is left).
#[derive(Debug, Default)]
struct Wait {
    at: Option<Instant>,
    settle: bool,
}

impl Wait {
    fn until(&mut self, now: Instant, t: Option<Instant>) {
        if let Some(t) = t.filter(|t| *t > now) {
            self.at = Some(self.at.map_or(t, |a| a.max(t)));
        }
    }

    fn ready(&self) -> bool {
        self.at.is_none() && !self.settle
    }

    /// How long to sleep before checking again.
    fn delay(&self, now: Instant) -> Duration {
        match self.at {
            Some(at) => at - now,
            None => SETTLE_POLL,
        }
    }
}

/// What the limiter knows about one route's bucket.
///
/// A request takes nothing from `remaining` for good: it is counted in
/// `in_flight` until its answer arrives, and the answer's headers (Discord's
/// count, which includes it) replace `remaining`. An answer without headers (a
/// 502 from a proxy, a reset, a timeout) only ends the reservation. So failures
/// can never drain the bucket, and every wait has an end: an exhausted bucket
/// always carries a reset time, a block always has a deadline, and a permit
/// always ends its reservation (when dropped at the latest).
#[derive(Debug, Default)]
struct Bucket {
    /// Window size last advertised; restores `remaining` when the window resets.
    limit: Option<u32>,
    /// Requests left in the window as the server last said; `None` while
    /// unknown (then one request at a time finds out).
    remaining: Option<u32>,
    /// When the advertised window resets; always set while `remaining` is 0.
    reset_at: Option<Instant>,
    /// Set by a 429 on this route: nothing goes out before.
    blocked_until: Option<Instant>,
    /// Permits handed out whose answer has not been recorded.
    in_flight: u32,
}

impl Bucket {
    fn refresh(&mut self, now: Instant) {
        if self.reset_at.is_some_and(|t| t <= now) {
            // A new window: the advertised limit applies again.
            self.reset_at = None;
            self.remaining = self.limit;
        }
        if self.remaining == Some(0) && self.reset_at.is_none() {
            // Cannot happen through `record`; never let it wedge if it did.
            self.remaining = None;
        }
    }

    fn wait(&mut self, now: Instant, wait: &mut Wait) {
        self.refresh(now);
        wait.until(now, self.blocked_until);
        match self.remaining {
            Some(0) => wait.until(now, self.reset_at),
            Some(left) if self.in_flight >= left => wait.settle = true,
            None if self.in_flight > 0 => wait.settle = true,
            _ => {}
        }
    }

    fn record(&mut self, now: Instant, h: &RateLimitHeaders) {
        if h.limit.is_some() {
            self.limit = h.limit;
        }
        if let Some(remaining) = h.remaining {
            self.remaining = Some(remaining);
        }
        if let Some(reset_after) = h.reset_after {
            self.reset_at = Some(now + reset_after.min(MAX_WAIT));
        }
        if self.remaining == Some(0) && self.reset_at.is_none_or(|t| t <= now) {
            self.reset_at = Some(now + DEFAULT_RESET_AFTER);
        }
    }

    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.reset_at.is_none_or(|t| t <= now)
            && self.blocked_until.is_none_or(|t| t <= now)
    }
}

/// The per-channel message window of one channel.
#[derive(Debug, Default)]
struct Channel {
    /// When the answer to each accepted message arrived, oldest first: Discord
    /// counted the message no later than that.
    sent: VecDeque<Instant>,
    /// Messages sent and not answered yet; each holds a slot.
    in_flight: u32,
    /// Set by a channel (shared-scope) 429: Discord's own word on when the
    /// channel takes a message again.
    blocked_until: Option<Instant>,
}

impl Channel {
    fn prune(&mut self, now: Instant, span: Duration) {
        while self.sent.front().is_some_and(|t| *t + span <= now) {
            self.sent.pop_front();
        }
    }

    fn wait(&mut self, now: Instant, span: Duration, max: u32, wait: &mut Wait) {
        self.prune(now, span);
        wait.until(now, self.blocked_until);
        let max = usize::try_from(max.max(1)).unwrap_or(usize::MAX);
        let in_flight = usize::try_from(self.in_flight).unwrap_or(usize::MAX);
        let held = self.sent.len().saturating_add(in_flight);
        if held < max {
            return;
        }
        // The slot that frees first: sent ones leave in order, unanswered ones
        // only after their answer.
        match self.sent.get(held - max) {
            Some(t) => wait.until(now, Some(*t + span)),
            None => wait.settle = true,
        }
    }

    fn idle(&self, now: Instant, span: Duration) -> bool {
        self.in_flight == 0
            && self.sent.back().is_none_or(|t| *t + span <= now)
            && self.blocked_until.is_none_or(|t| t <= now)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Send times within the last second, oldest first.
    global_sends: VecDeque<Instant>,
    /// Set by a global 429: nothing goes out before.
    global_blocked_until: Option<Instant>,
    buckets: HashMap<String, Bucket>,
    channels: HashMap<String, Channel>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a permit settles, so waiters held up by an unanswered
    /// request go at once.
    settled: Notify,
}

/// Paces requests so that none exceeds a known limit. Cheap to clone (shared
/// state); use one per client so all its requests are counted together.
///
/// Every request holds a [`Permit`] from before it is sent until its answer is
/// recorded with it ([`Permit::done`], [`Permit::refused`],
/// [`Permit::rate_limited`], [`Permit::lost`]); a permit dropped unrecorded
/// (the send was cancelled or timed out) ends its reservation too.
#[derive(Debug, Clone)]
pub struct Limiter {
    config: LimiterConfig,
    shared: Arc<Shared>,
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

fn later(current: Option<Instant>, until: Instant) -> Option<Instant> {
    Some(current.map_or(until, |t| t.max(until)))
}

impl Limiter {
    pub fn new(config: LimiterConfig) -> Self {
        Self {
            config,
            shared: Arc::new(Shared::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a
        // plain assignment or push.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long a channel slot stays taken after the message's answer.
    fn channel_span(&self) -> Duration {
        self.config.channel_window + channel_margin(self.config.channel_window)
    }

    fn channel_limit<'a>(&self, channel_key: Option<&'a str>) -> Option<(&'a str, u32)> {
        let key = channel_key?;
        let max = self.config.channel_messages_per_minute?;
        Some((key, max))
    }

    /// Waits until a request on `route` (e.g. `"webhook:{id}"` or
    /// `"POST /channels/{id}/webhooks"` with the id filled in) stays within the
    /// route's bucket and the global budget, and reserves it.
    pub async fn acquire(&self, route: &str) -> Permit {
        loop {
            // Without a deadline `wait` only returns with a permit.
            if let Some(permit) = self.wait(route, None, None).await {
                return permit;
            }
        }
    }

    /// [`Limiter::acquire`] for a request that posts a message in the channel
    /// `channel_key`: also keeps within the unadvertised per-channel window.
    pub async fn acquire_message(&self, route: &str, channel_key: &str) -> Permit {
        loop {
            if let Some(permit) = self.wait(route, Some(channel_key), None).await {
                return permit;
            }
        }
    }

    /// Like [`Limiter::acquire_message`] (or [`Limiter::acquire`] without a
    /// channel), giving up at `deadline`: `None` when no permit came by then.
    pub async fn acquire_until(
        &self,
        route: &str,
        channel_key: Option<&str>,
        deadline: Instant,
    ) -> Option<Permit> {
        self.wait(route, channel_key, Some(deadline)).await
    }

    /// Takes a permit if one is available now; otherwise returns how long to
    /// wait before asking again. Lets a sender coalesce work while it waits.
    pub fn try_acquire(&self, route: &str, channel_key: Option<&str>) -> Result<Permit, Duration> {
        let now = Instant::now();
        let mut state = self.state();
        let wait = self.ready_at(&mut state, now, route, channel_key);
        if wait.ready() {
            Ok(self.reserve(&mut state, now, route, channel_key))
        } else {
            Err(wait.delay(now))
        }
    }

    async fn wait(
        &self,
        route: &str,
        channel_key: Option<&str>,
        deadline: Option<Instant>,
    ) -> Option<Permit> {
        loop {
            let settled = self.shared.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let delay = match self.try_acquire(route, channel_key) {
                Ok(permit) => return Some(permit),
                Err(delay) => delay,
            };
            let wake = Instant::now() + delay;
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return None;
            }
            let wake = deadline.map_or(wake, |d| wake.min(d));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = &mut settled => {}
            }
        }
    }

    fn ready_at(
        &self,
        state: &mut State,
        now: Instant,
        route: &str,
        channel_key: Option<&str>,
    ) -> Wait {
        let mut wait = Wait::default();
        wait.until(now, state.global_blocked_until);
        if self.config.global_per_second > 0 {
            let at = window_ready(
                &mut state.global_sends,
                now,
                GLOBAL_WINDOW,
                self.config.global_per_second,
            );
            wait.until(now, at);
        }
        if let Some(bucket) = state.buckets.get_mut(route) {
            bucket.wait(now, &mut wait);
        }
        if let Some((key, max)) = self.channel_limit(channel_key) {
            if let Some(channel) = state.channels.get_mut(key) {
                channel.wait(now, self.channel_span(), max, &mut wait);
            }
        }
        wait
    }

    fn reserve(
        &self,
        state: &mut State,
        now: Instant,
        route: &str,
        channel_key: Option<&str>,
    ) -> Permit {
        if self.config.global_per_second > 0 {
            state.global_sends.push_back(now);
        }
        if !state.buckets.contains_key(route) && state.buckets.len() >= PRUNE_ABOVE {
            state.buckets.retain(|_, b| !b.idle(now));
        }
        let bucket = state.buckets.entry(route.to_owned()).or_default();
        bucket.in_flight = bucket.in_flight.saturating_add(1);
        let channel = self.channel_limit(channel_key).map(|(key, _)| {
            if !state.channels.contains_key(key) && state.channels.len() >= PRUNE_ABOVE {
                let span = self.channel_span();
                state.channels.retain(|_, c| !c.idle(now, span));
            }
            let channel = state.channels.entry(key.to_owned()).or_default();
            channel.in_flight = channel.in_flight.saturating_add(1);
            key.to_owned()
        });
        Permit {
            limiter: self.clone(),
            route: route.to_owned(),
            channel,
            settled: false,
        }
    }

    /// Ends one reservation: what the answer said about the bucket, whether the
    /// channel counted a message, and any 429 block.
    fn settle(&self, permit: &Permit, outcome: Settled<'_>) {
        let now = Instant::now();
        {
            let mut state = self.state();
            if let Some(bucket) = state.buckets.get_mut(&permit.route) {
                bucket.in_flight = bucket.in_flight.saturating_sub(1);
            }
            let (headers, counted) = match outcome {
                Settled::Answered { headers, counted } => (Some(headers), counted),
                Settled::Unknown => (None, true),
                Settled::RateLimited(h) => {
                    self.block(&mut state, now, permit, h);
                    (Some(h), false)
                }
            };
            if let Some(h) = headers.filter(|h| h.remaining.is_some() || h.reset_after.is_some()) {
                if let Some(bucket) = state.buckets.get_mut(&permit.route) {
                    bucket.record(now, h);
                }
            }
            if let Some(channel) = permit
                .channel
                .as_ref()
                .and_then(|k| state.channels.get_mut(k))
            {
                channel.in_flight = channel.in_flight.saturating_sub(1);
                if counted {
                    channel.sent.push_back(now);
                }
            }
        }
        self.shared.settled.notify_waiters();
    }

    /// A 429: blocks the route, the channel (a shared-scope 429 on a message:
    /// the channel's limit) or every route (global) for `retry_after`.
    fn block(&self, state: &mut State, now: Instant, permit: &Permit, h: &RateLimitHeaders) {
        let wait = h
            .retry_after
            .or(h.reset_after)
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(MAX_WAIT);
        let until = now + wait;
        if h.global || h.scope == Some(Scope::Global) {
            state.global_blocked_until = later(state.global_blocked_until, until);
            return;
        }
        let channel = permit
            .channel
            .as_ref()
            .filter(|_| h.scope == Some(Scope::Shared))
            .and_then(|k| state.channels.get_mut(k));
        match channel {
            // Re-aligned to Discord's word: the channel takes a message again
            // after `retry_after`, whatever our own window says.
            Some(channel) => channel.blocked_until = later(channel.blocked_until, until),
            None => {
                let bucket = state.buckets.entry(permit.route.clone()).or_default();
                bucket.blocked_until = later(bucket.blocked_until, until);
            }
        }
    }

    /// How long ago `channel_key` accepted the messages that still hold its
    /// window (oldest first; a message still unanswered counts as just now),
    /// so another client taking over the channel can keep its pace
    /// ([`Limiter::seed_channel`]): a watcher handing its run over to
    /// bot-bridge at shutdown.
    pub fn channel_sends(&self, channel_key: &str) -> Vec<Duration> {
        let now = Instant::now();
        let span = self.channel_span();
        let mut state = self.state();
        let Some(channel) = state.channels.get_mut(channel_key) else {
            return Vec::new();
        };
        channel.prune(now, span);
        let mut ages: Vec<Duration> = channel
            .sent
            .iter()
            .map(|t| now.saturating_duration_since(*t))
            .collect();
        let in_flight = usize::try_from(channel.in_flight).unwrap_or(usize::MAX);
        ages.extend(std::iter::repeat_n(Duration::ZERO, in_flight));
        ages
    }

    /// Counts messages another client sent to `channel_key`, `ages` ago, in
    /// its window, as if they were this limiter's own (see
    /// [`Limiter::channel_sends`]). Ages beyond the window change nothing;
    /// at most one window's worth of messages is kept.
    pub fn seed_channel(&self, channel_key: &str, ages: &[Duration]) {
        let Some((key, max)) = self.channel_limit(Some(channel_key)) else {
            return;
        };
        let now = Instant::now();
        let span = self.channel_span();
        let mut state = self.state();
        let channel = state.channels.entry(key.to_owned()).or_default();
        for age in ages.iter().filter(|a| **a < span) {
            if let Some(t) = now.checked_sub(*age) {
                channel.sent.push_back(t);
            }
        }
        channel.sent.make_contiguous().sort();
        let keep = usize::try_from(max.max(1)).unwrap_or(usize::MAX);
        while channel.sent.len() > keep {
            channel.sent.pop_front();
        }
    }

    /// Records what a response's headers said about `route`'s bucket, outside
    /// any permit (e.g. a response to a request the limiter did not pace).
    pub fn update(&self, route: &str, h: &RateLimitHeaders) {
        if h.remaining.is_none() && h.reset_after.is_none() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        if !state.buckets.contains_key(route) && state.buckets.len() >= PRUNE_ABOVE {
            state.buckets.retain(|_, b| !b.idle(now));
        }
        state
            .buckets
            .entry(route.to_owned())
            .or_default()
            .record(now, h);
    }
}

/// What one limiter knows about a route's bucket, in durations from the
/// moment it was taken, so another process (with its own clock) can take it
/// over: replicas hand the buckets of the routes they share (the guild's)
/// from one to the next with the lock that serialises those calls, and the
/// next one paces from where the last one left off instead of from its own,
/// older, view (see [`Limiter::snapshot`] and [`Limiter::restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSnapshot {
    /// The limiter's key, e.g. `"POST /guilds/{guild_id}/channels 1"`.
    pub route: String,
    /// Requests per window, as last advertised.
    pub limit: Option<u32>,
    /// Requests left in the open window.
    pub remaining: Option<u32>,
    /// Until the open window resets.
    pub reset_after: Option<Duration>,
    /// Until a 429's block on the route ends.
    pub blocked_for: Option<Duration>,
}

impl Limiter {
    /// Every bucket with something to pass on: an open window or a block.
    /// A closed window says nothing the next holder cannot learn from one
    /// request, so it is left out (a snapshot stays a handful of rows).
    pub fn snapshot(&self) -> Vec<BucketSnapshot> {
        let now = Instant::now();
        let mut state = self.state();
        let mut out: Vec<BucketSnapshot> = state
            .buckets
            .iter_mut()
            .filter_map(|(route, b)| {
                b.refresh(now);
                let reset_after = b.reset_at.filter(|t| *t > now).map(|t| t - now);
                let blocked_for = b.blocked_until.filter(|t| *t > now).map(|t| t - now);
                if reset_after.is_none() && blocked_for.is_none() {
                    return None;
                }
                Some(BucketSnapshot {
                    route: route.clone(),
                    limit: b.limit,
                    remaining: b.remaining,
                    reset_after,
                    blocked_for,
                })
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }

    /// Takes over what another limiter knew about these buckets: it saw
    /// Discord's answers after this one's, so its word replaces this one's
    /// window (requests in flight stay counted), and a block only ever
    /// lengthens. Durations are capped at [`MAX_WAIT`], and an exhausted
    /// bucket always has a reset, so a restored state can never wedge.
    pub fn restore(&self, buckets: &[BucketSnapshot]) {
        let now = Instant::now();
        {
            let mut state = self.state();
            for s in buckets {
                if !state.buckets.contains_key(&s.route) && state.buckets.len() >= PRUNE_ABOVE {
                    state.buckets.retain(|_, b| !b.idle(now));
                }
                let bucket = state.buckets.entry(s.route.clone()).or_default();
                if s.limit.is_some() {
                    bucket.limit = s.limit;
                }
                match s.reset_after {
                    Some(after) => {
                        bucket.remaining = s.remaining;
                        bucket.reset_at = Some(now + after.min(MAX_WAIT));
                    }
                    // No open window: the next request opens one.
                    None => {
                        bucket.remaining = bucket.limit;
                        bucket.reset_at = None;
                    }
                }
                if bucket.remaining == Some(0) && bucket.reset_at.is_none() {
                    bucket.reset_at = Some(now + DEFAULT_RESET_AFTER);
                }
                if let Some(blocked) = s.blocked_for {
                    bucket.blocked_until = later(bucket.blocked_until, now + blocked.min(MAX_WAIT));
                }
            }
        }
        // A waiter may go sooner (or must re-check against a fuller bucket).
        self.shared.settled.notify_waiters();
    }
}

/// How a permit ended.
enum Settled<'a> {
    /// An answer arrived; `counted`: Discord created something (a message
    /// takes a channel slot).
    Answered {
        headers: &'a RateLimitHeaders,
        counted: bool,
    },
    /// A 429 with these headers (`retry_after` filled from the body).
    RateLimited(&'a RateLimitHeaders),
    /// Nothing is known (cancelled, timed out): the channel slot is kept, as
    /// Discord may have taken the message.
    Unknown,
}

/// One request's reservation: taken before it is sent, ended with what its
/// answer said. Dropping it unrecorded ends the reservation as "outcome
/// unknown" (the bucket is released; a message keeps its channel slot).
#[derive(Debug)]
#[must_use = "a permit paces one request; record its answer with it"]
pub struct Permit {
    limiter: Limiter,
    route: String,
    channel: Option<String>,
    settled: bool,
}

impl Permit {
    fn finish(mut self, outcome: Settled<'_>) {
        self.settled = true;
        self.limiter.settle(&self, outcome);
    }

    /// A 2xx: Discord did it (a message takes its channel slot from now).
    pub fn done(self, headers: &RateLimitHeaders) {
        self.finish(Settled::Answered {
            headers,
            counted: true,
        });
    }

    /// An answer that created nothing (a 4xx other than 429, a 5xx): its
    /// headers, if any, are recorded; the channel slot is freed.
    pub fn refused(self, headers: &RateLimitHeaders) {
        self.finish(Settled::Answered {
            headers,
            counted: false,
        });
    }

    /// A 429 (`headers.retry_after` filled from the body when the header is
    /// missing): blocks the route, the channel or everything for that long
    /// (capped at [`MAX_WAIT`]); the request took no slot.
    pub fn rate_limited(self, headers: &RateLimitHeaders) {
        self.finish(Settled::RateLimited(headers));
    }

    /// No answer, and Discord did not take the request (connection refused or
    /// reset before an answer): frees everything it held.
    pub fn lost(self) {
        self.refused(&RateLimitHeaders::default());
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.limiter.settle(self, Settled::Unknown);
        }
    }
}

#[cfg(test)]
mod tests;
