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
    let body = br#"{"message":"You are being rate limited.","retry_after":0.651,"global":true}"#;
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
    fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            started: None,
            used: 0,
        }
    }

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

fn no_channel_limit() -> LimiterConfig {
    LimiterConfig {
        global_per_second: 50,
        channel_messages_per_minute: None,
        ..LimiterConfig::default()
    }
}

fn user_429(retry_after: Duration) -> RateLimitHeaders {
    RateLimitHeaders {
        scope: Some(Scope::User),
        retry_after: Some(retry_after),
        ..RateLimitHeaders::default()
    }
}

/// Waits for a permit for at most `within`; `None` means the limiter
/// would have kept the request waiting longer (a wedge, if forever).
async fn permit_within(
    limiter: &Limiter,
    route: &str,
    channel: Option<&str>,
    within: Duration,
) -> Option<Permit> {
    limiter
        .acquire_until(route, channel, Instant::now() + within)
        .await
}

#[tokio::test(start_paused = true)]
async fn rate_limit_never_exceeded() {
    let limiter = Limiter::new(LimiterConfig::default());
    let mut server = FakeBucket::new(5, Duration::from_secs(2));
    let start = Instant::now();
    let mut answered = Vec::new();
    for _ in 0..100 {
        let permit = limiter.acquire_message("webhook:1", "channel:1").await;
        permit.done(&server.hit(Instant::now()));
        answered.push(Instant::now());
    }
    for pair in answered.windows(31) {
        assert!(
            pair[30] - pair[0] >= CHANNEL_WINDOW,
            "more than 30 messages in 60 s"
        );
    }
    // Not needlessly slow either: three windows and their margins, and the
    // start of a fourth.
    let elapsed = answered[99] - start;
    assert!(elapsed >= Duration::from_secs(180), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(195), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn advertised_bucket_is_respected_without_channel_limit() {
    let limiter = Limiter::new(no_channel_limit());
    let mut server = FakeBucket::new(5, Duration::from_secs(2));
    let start = Instant::now();
    for _ in 0..20 {
        let permit = limiter.acquire_message("webhook:1", "channel:1").await;
        permit.done(&server.hit(Instant::now()));
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(6));
}

/// issue 15: five 502s without headers used to take the last five requests
/// of the bucket for good; with no reset known the limiter then re-checked
/// forever and sent nothing again.
#[tokio::test(start_paused = true)]
async fn failures_without_headers_never_drain_the_bucket() {
    let limiter = Limiter::new(LimiterConfig::default());
    let mut server = FakeBucket::new(5, Duration::from_secs(2));
    let permit = limiter.acquire_message("webhook:1", "c").await;
    permit.done(&server.hit(Instant::now()));
    // The window resets; then a run of answers without any header.
    tokio::time::advance(Duration::from_secs(3)).await;
    for i in 0..12 {
        let permit = permit_within(&limiter, "webhook:1", Some("c"), Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("failure {i}: no permit"));
        if i % 2 == 0 {
            permit.refused(&RateLimitHeaders::default()); // a 502 from a proxy
        } else {
            permit.lost(); // a reset
        }
    }
    // Discord is back: the next request goes at once.
    let start = Instant::now();
    let permit = limiter.acquire_message("webhook:1", "c").await;
    assert_eq!(Instant::now(), start);
    permit.done(&server.hit(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn dropped_permits_end_their_reservation() {
    let limiter = Limiter::new(no_channel_limit());
    for _ in 0..10 {
        // A send cancelled (shutdown) or timed out.
        let permit = limiter.acquire("r").await;
        drop(permit);
    }
    assert!(permit_within(&limiter, "r", None, Duration::ZERO)
        .await
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_bucket_without_a_reset_reopens() {
    let limiter = Limiter::new(no_channel_limit());
    let permit = limiter.acquire("r").await;
    permit.done(&RateLimitHeaders {
        limit: Some(5),
        remaining: Some(0),
        ..RateLimitHeaders::default()
    });
    let start = Instant::now();
    let permit = permit_within(&limiter, "r", None, Duration::from_secs(5)).await;
    assert!(permit.is_some(), "an exhausted bucket with no reset wedged");
    assert_eq!(Instant::now() - start, DEFAULT_RESET_AFTER);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_bucket_sends_one_request_at_a_time() {
    let limiter = Limiter::new(no_channel_limit());
    let first = limiter.acquire("r").await;
    assert!(limiter.try_acquire("r", None).is_err());
    let start = Instant::now();
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let _permit = limiter.acquire("r").await;
            Instant::now() - start
        })
    };
    tokio::time::advance(Duration::from_millis(30)).await;
    // The answer says there is room: the waiter goes at once.
    first.done(&RateLimitHeaders {
        limit: Some(5),
        remaining: Some(4),
        reset_after: Some(Duration::from_secs(2)),
        ..RateLimitHeaders::default()
    });
    assert_eq!(waiter.await.unwrap(), Duration::from_millis(30));
    let a = limiter.try_acquire("r", None);
    let b = limiter.try_acquire("r", None);
    assert!(a.is_ok() && b.is_ok(), "headers allow requests in parallel");
}

#[tokio::test(start_paused = true)]
async fn global_budget_holds_over_all_routes() {
    let limiter = Limiter::new(no_channel_limit());
    let mut sent = Vec::new();
    for i in 0..175 {
        let permit = limiter.acquire(&format!("route:{i}")).await;
        permit.done(&RateLimitHeaders::default());
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
    limiter.acquire("a").await.rate_limited(&RateLimitHeaders {
        global: true,
        retry_after: Some(Duration::from_secs(5)),
        ..RateLimitHeaders::default()
    });
    let _b = limiter.acquire("b").await;
    assert_eq!(Instant::now() - start, Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn route_429_blocks_only_that_route() {
    let limiter = Limiter::new(LimiterConfig::default());
    let start = Instant::now();
    limiter.acquire("a").await.rate_limited(&RateLimitHeaders {
        scope: Some(Scope::User),
        reset_after: Some(Duration::from_millis(700)),
        ..RateLimitHeaders::default()
    });
    let _b = limiter.acquire("b").await;
    assert_eq!(Instant::now(), start);
    assert_eq!(
        limiter.try_acquire("a", None).err(),
        Some(Duration::from_millis(700))
    );
    let _a = limiter.acquire("a").await;
    assert_eq!(Instant::now() - start, Duration::from_millis(700));
}

/// issue 15 (low): a 429 asking for 10^15 s overflowed the clock and
/// aborted the watcher.
#[tokio::test(start_paused = true)]
async fn a_huge_retry_after_is_capped_never_a_panic() {
    let limiter = Limiter::new(LimiterConfig::default());
    let huge = Duration::from_secs(10_000_000_000_000_000_000);
    limiter.acquire("a").await.rate_limited(&user_429(huge));
    assert_eq!(limiter.try_acquire("a", None).err(), Some(MAX_WAIT));
    limiter.acquire("g").await.rate_limited(&RateLimitHeaders {
        global: true,
        retry_after: Some(Duration::MAX),
        ..RateLimitHeaders::default()
    });
    limiter
        .acquire_message("w", "c")
        .await
        .rate_limited(&RateLimitHeaders {
            scope: Some(Scope::Shared),
            retry_after: Some(Duration::MAX),
            ..RateLimitHeaders::default()
        });
    limiter.update(
        "b",
        &RateLimitHeaders {
            remaining: Some(0),
            reset_after: Some(Duration::MAX),
            ..RateLimitHeaders::default()
        },
    );
    assert_eq!(limiter.try_acquire("b", None).err(), Some(MAX_WAIT));
    // Parsed from the wire, such values stay representable.
    let h = parse_headers(&headers(&[
        ("retry-after", "1e19"),
        ("x-ratelimit-reset-after", "1e300"),
    ]));
    assert_eq!(h.retry_after, Some(huge));
    assert_eq!(h.reset_after, None);
}

#[tokio::test(start_paused = true)]
async fn acquire_until_gives_up_at_the_deadline() {
    let limiter = Limiter::new(LimiterConfig::default());
    limiter
        .acquire("a")
        .await
        .rate_limited(&user_429(Duration::from_secs(30)));
    let start = Instant::now();
    assert!(permit_within(&limiter, "a", None, Duration::from_secs(10))
        .await
        .is_none());
    assert_eq!(Instant::now() - start, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn concurrent_waiters_share_the_window() {
    let limiter = Limiter::new(LimiterConfig {
        global_per_second: 0,
        channel_messages_per_minute: Some(3),
        ..LimiterConfig::default()
    });
    let start = Instant::now();
    let tasks: Vec<_> = (0..7)
        .map(|i| {
            let l = limiter.clone();
            tokio::spawn(async move {
                // One webhook per task: only the channel is shared.
                let permit = l.acquire_message(&format!("w{i}"), "c").await;
                let at = Instant::now() - start;
                permit.done(&RateLimitHeaders::default());
                at
            })
        })
        .collect();
    let mut at = Vec::new();
    for t in tasks {
        at.push(t.await.unwrap());
    }
    at.sort();
    let slot = CHANNEL_WINDOW + channel_margin(CHANNEL_WINDOW);
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            slot,
            slot,
            slot,
            slot * 2
        ]
    );
}

/// A per-channel limit enforced by a server in one of the ways Discord
/// might: a sliding window, or fixed windows of some phase. Panics on
/// what would be a 429.
struct ChannelServer {
    max: usize,
    window: Duration,
    /// `None`: sliding; `Some(phase)`: fixed windows starting at
    /// `origin + phase + k * window`.
    fixed_phase: Option<Duration>,
    origin: Instant,
    arrivals: VecDeque<Instant>,
}

impl ChannelServer {
    fn count(&mut self, at: Instant) {
        match self.fixed_phase {
            None => {
                while self
                    .arrivals
                    .front()
                    .is_some_and(|t| *t + self.window <= at)
                {
                    self.arrivals.pop_front();
                }
            }
            Some(phase) => {
                let since = (at + self.window - phase) - self.origin;
                let k = since.as_nanos() / self.window.as_nanos();
                let start =
                    self.origin + phase + self.window * u32::try_from(k).unwrap() - self.window;
                while self.arrivals.front().is_some_and(|t| *t < start) {
                    self.arrivals.pop_front();
                }
            }
        }
        self.arrivals.push_back(at);
        assert!(
            self.arrivals.len() <= self.max,
            "429: {} messages in one window ({:?})",
            self.arrivals.len(),
            self.fixed_phase
        );
    }
}

/// issue 16: pacing by send times let a message that travelled faster
/// than the one a window before it arrive inside Discord's window.
/// Counting from the answer keeps to a sliding window and to fixed windows
/// of any phase, with varying latency, at ≥ 0.95 of the limit's rate.
#[tokio::test(start_paused = true)]
async fn channel_pacing_keeps_to_sliding_and_fixed_windows_at_full_rate() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let window = CHANNEL_WINDOW;
    for run in 0..8 {
        let limiter = Limiter::new(LimiterConfig {
            global_per_second: 0,
            channel_messages_per_minute: Some(30),
            ..LimiterConfig::default()
        });
        let start = Instant::now();
        let fixed_phase =
            (run % 2 == 1).then(|| Duration::from_millis(rng.random_range(0..60_000)));
        let mut server = ChannelServer {
            max: 30,
            window,
            fixed_phase,
            origin: start,
            arrivals: VecDeque::new(),
        };
        let messages = 91;
        let mut first_arrival = None;
        let mut last_arrival = start;
        for _ in 0..messages {
            let permit = limiter.acquire_message("w", "c").await;
            // Latency up and back varies between 5 and 400 ms.
            tokio::time::advance(Duration::from_millis(rng.random_range(5..400))).await;
            server.count(Instant::now());
            first_arrival.get_or_insert(Instant::now());
            last_arrival = Instant::now();
            tokio::time::advance(Duration::from_millis(rng.random_range(5..400))).await;
            permit.done(&RateLimitHeaders::default());
        }
        // Ideal: 30 at once, then 30 a window later, and so on.
        let ideal = window * u32::try_from((messages - 1) / 30).unwrap();
        let took = last_arrival - first_arrival.unwrap();
        let rate = ideal.as_secs_f64() / took.as_secs_f64();
        assert!(rate >= 0.95, "run {run}: {took:?} for {ideal:?}: {rate:.3}");
    }
}

/// issue 16: after a channel 429 the sender waits what Discord said, not
/// for its own window to free a slot.
#[tokio::test(start_paused = true)]
async fn a_channel_429_realigns_to_retry_after() {
    let limiter = Limiter::new(LimiterConfig {
        global_per_second: 0,
        channel_messages_per_minute: Some(30),
        ..LimiterConfig::default()
    });
    for _ in 0..29 {
        let permit = limiter.acquire_message("w", "c").await;
        permit.done(&RateLimitHeaders::default());
    }
    // Discord counted one more than we did (another webhook, a retry).
    let start = Instant::now();
    limiter
        .acquire_message("w", "c")
        .await
        .rate_limited(&RateLimitHeaders {
            scope: Some(Scope::Shared),
            retry_after: Some(Duration::from_millis(1500)),
            ..RateLimitHeaders::default()
        });
    let permit = limiter.acquire_message("w", "c").await;
    assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    permit.done(&RateLimitHeaders::default());
    // The route itself was not blocked (a shared 429 is the channel's).
    assert!(limiter.try_acquire("w", None).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_scaled_channel_window_paces_proportionally() {
    let window = Duration::from_secs(6);
    let limiter = Limiter::new(LimiterConfig {
        global_per_second: 0,
        channel_messages_per_minute: Some(30),
        channel_window: window,
    });
    let start = Instant::now();
    for _ in 0..31 {
        let permit = limiter.acquire_message("w", "c").await;
        permit.done(&RateLimitHeaders::default());
    }
    assert_eq!(Instant::now() - start, window + Duration::from_millis(100));
}

/// A channel handed from one client to another keeps its pace: the second
/// waits for the window the first filled, not for a window of its own.
#[tokio::test(start_paused = true)]
async fn a_seeded_channel_continues_another_clients_pace() {
    let config = LimiterConfig {
        global_per_second: 0,
        channel_messages_per_minute: Some(30),
        ..LimiterConfig::default()
    };
    let first = Limiter::new(config);
    for _ in 0..30 {
        let permit = first.acquire_message("w", "c").await;
        permit.done(&RateLimitHeaders::default());
    }
    tokio::time::advance(Duration::from_secs(20)).await;
    let sends = first.channel_sends("c");
    assert_eq!(sends.len(), 30);
    assert!(sends.iter().all(|a| *a == Duration::from_secs(20)));
    assert!(first.channel_sends("other").is_empty());

    let second = Limiter::new(config);
    second.seed_channel("c", &sends);
    // The window the first filled ends 40 s (+ the margin) from now.
    let start = Instant::now();
    let permit = second.acquire_message("w2", "c").await;
    let waited = Instant::now() - start;
    assert_eq!(
        waited,
        Duration::from_secs(40) + channel_margin(config_window())
    );
    permit.done(&RateLimitHeaders::default());
    // Another channel of the second client is not held.
    assert!(second.try_acquire("w3", Some("d")).is_ok());
    // Ages past the window, or more than a window's worth, change nothing.
    let third = Limiter::new(LimiterConfig {
        global_per_second: 0,
        channel_messages_per_minute: Some(30),
        ..LimiterConfig::default()
    });
    third.seed_channel("c", &[Duration::from_secs(3600); 50]);
    assert!(third.try_acquire("w", Some("c")).is_ok());
}

fn config_window() -> Duration {
    LimiterConfig::default().channel_window
}

/// Two limiters (two replicas) taking turns on one Discord bucket, as the
/// provisioning lock passes between them: `handoff` passes the bucket with
/// the turn. Panics (a 429) when the next one paces from its own old view.
async fn take_turns(handoff: bool) -> Duration {
    let replicas = [
        Limiter::new(no_channel_limit()),
        Limiter::new(no_channel_limit()),
    ];
    let mut server = FakeBucket::new(10, Duration::from_secs(1));
    let start = Instant::now();
    for turn in 0..30 {
        let (this, next) = (&replicas[turn % 2], &replicas[(turn + 1) % 2]);
        for _ in 0..3 {
            let permit = this.acquire("POST /guilds/{guild_id}/channels 1").await;
            permit.done(&server.hit(Instant::now()));
        }
        if handoff {
            next.restore(&this.snapshot());
        }
    }
    Instant::now() - start
}

#[tokio::test(start_paused = true)]
async fn replicas_passing_the_bucket_on_never_exceed_it() {
    // 90 requests at 10 a second: the first window's ten go at once.
    assert_eq!(take_turns(true).await, Duration::from_secs(8));
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "would be a 429")]
async fn replicas_pacing_from_their_own_view_exceed_the_bucket() {
    take_turns(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_holds_only_open_windows_and_blocks() {
    let limiter = Limiter::new(no_channel_limit());
    limiter.acquire("open").await.done(&RateLimitHeaders {
        limit: Some(5),
        remaining: Some(2),
        reset_after: Some(Duration::from_millis(800)),
        ..RateLimitHeaders::default()
    });
    limiter
        .acquire("blocked")
        .await
        .rate_limited(&user_429(Duration::from_secs(3)));
    limiter.acquire("closed").await.done(&RateLimitHeaders {
        limit: Some(5),
        remaining: Some(4),
        reset_after: Some(Duration::from_millis(100)),
        ..RateLimitHeaders::default()
    });
    tokio::time::advance(Duration::from_millis(300)).await;
    let snap = limiter.snapshot();
    let routes: Vec<&str> = snap.iter().map(|s| s.route.as_str()).collect();
    assert_eq!(routes, ["blocked", "open"]);
    assert_eq!(snap[1].remaining, Some(2));
    assert_eq!(snap[1].reset_after, Some(Duration::from_millis(500)));
    assert_eq!(snap[0].blocked_for, Some(Duration::from_millis(2700)));
}

/// issue 15's promise holds for a restored state too: whatever a snapshot
/// says (an exhausted bucket without a reset, a reset a lifetime away), the
/// route opens again within [`MAX_WAIT`] at the latest.
#[tokio::test(start_paused = true)]
async fn a_restored_bucket_never_wedges() {
    let limiter = Limiter::new(no_channel_limit());
    limiter.restore(&[
        BucketSnapshot {
            route: "no-reset".into(),
            limit: Some(5),
            remaining: Some(0),
            reset_after: None,
            blocked_for: None,
        },
        BucketSnapshot {
            route: "far".into(),
            limit: Some(5),
            remaining: Some(0),
            reset_after: Some(Duration::from_secs(u64::MAX / 4)),
            blocked_for: Some(Duration::from_secs(u64::MAX / 4)),
        },
    ]);
    let start = Instant::now();
    assert!(permit_within(&limiter, "no-reset", None, Duration::ZERO)
        .await
        .is_some());
    assert!(permit_within(&limiter, "far", None, MAX_WAIT)
        .await
        .is_some());
    assert_eq!(Instant::now() - start, MAX_WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_restored_window_wakes_a_waiter_held_by_the_old_one() {
    let limiter = Limiter::new(no_channel_limit());
    limiter.acquire("r").await.done(&RateLimitHeaders {
        limit: Some(5),
        remaining: Some(0),
        reset_after: Some(Duration::from_secs(5)),
        ..RateLimitHeaders::default()
    });
    let start = Instant::now();
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let _permit = limiter.acquire("r").await;
            Instant::now() - start
        })
    };
    tokio::time::advance(Duration::from_millis(200)).await;
    limiter.restore(&[BucketSnapshot {
        route: "r".into(),
        limit: Some(5),
        remaining: Some(3),
        reset_after: Some(Duration::from_millis(900)),
        blocked_for: None,
    }]);
    assert_eq!(waiter.await.unwrap(), Duration::from_millis(200));
}
