//! The rate-limit windows the fake enforces, and the maxima it reports.
//!
//! Pure data over `tokio::time::Instant`, so the tests run on a paused clock.
//! A request is checked against every window first and counted only when all of
//! them let it through ([`FixedWindow::peek`] then [`FixedWindow::take`]): a
//! request Discord refuses with a 429 does not use up a slot.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Rounds up to whole milliseconds: a client that waits what it was told must
/// never arrive a fraction of a millisecond early.
pub fn ceil_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// What an advertised bucket says about itself (the `X-RateLimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub limit: u32,
    pub remaining: u32,
    /// Until the window resets (rounded up to ms).
    pub reset_after: Duration,
}

/// A fixed window as Discord's advertised buckets run: it opens at the first
/// request, allows `limit` requests, and resets `window` after it opened.
#[derive(Debug, Clone)]
pub struct FixedWindow {
    limit: u32,
    window: Duration,
    opened: Option<Instant>,
    used: u32,
}

impl FixedWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            opened: None,
            used: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        if self.opened.is_some_and(|o| now >= o + self.window) {
            self.opened = None;
            self.used = 0;
        }
    }

    /// `Err(retry_after)` when one more request now would exceed the limit.
    pub fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        self.roll(now);
        match self.opened {
            Some(o) if self.used >= self.limit => Err(ceil_ms(o + self.window - now)),
            _ => Ok(()),
        }
    }

    /// Counts one request (call after [`FixedWindow::peek`] said yes).
    pub fn take(&mut self, now: Instant) {
        self.roll(now);
        if self.opened.is_none() {
            self.opened = Some(now);
        }
        self.used = self.used.saturating_add(1);
    }

    /// The bucket as the headers describe it now. A bucket with no open window
    /// reports a full one that would reset a whole window from now.
    pub fn state(&mut self, now: Instant) -> BucketState {
        self.roll(now);
        let reset_after = match self.opened {
            Some(o) => o + self.window - now,
            None => self.window,
        };
        BucketState {
            limit: self.limit,
            remaining: self.limit.saturating_sub(self.used),
            reset_after: ceil_ms(reset_after),
        }
    }

    /// Whether the window is closed (nothing to remember).
    pub fn idle(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.opened.is_none()
    }
}

/// A sliding window: at most `max` events in any `window`. Used for Discord's
/// unadvertised per-channel limit and the global per-second limit.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    max: usize,
    window: Duration,
    times: VecDeque<Instant>,
}

impl SlidingWindow {
    /// `window` is the effective one (already shortened by any tolerance).
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max: usize::try_from(max.max(1)).unwrap_or(usize::MAX),
            window,
            times: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while self.times.front().is_some_and(|t| *t + self.window <= now) {
            self.times.pop_front();
        }
    }

    /// `Err(retry_after)` when one more event now would exceed the limit.
    pub fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        self.prune(now);
        if self.times.len() < self.max {
            return Ok(());
        }
        // The event that has to leave the window before one more fits.
        let first = self.times.len() - self.max;
        match self.times.get(first) {
            Some(t) => Err(ceil_ms(*t + self.window - now)),
            None => Ok(()),
        }
    }

    pub fn take(&mut self, now: Instant) {
        self.prune(now);
        self.times.push_back(now);
    }

    /// Events in the window ending now.
    pub fn count(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.times.len()
    }
}

/// Fixed windows of a given phase: at most `max` events in each
/// `[origin + phase + k·window, origin + phase + (k+1)·window)`. One way Discord
/// may count its unadvertised per-channel limit.
#[derive(Debug, Clone)]
pub struct PhasedWindow {
    max: u32,
    window: Duration,
    /// `origin + phase`: a window boundary.
    boundary: Instant,
    /// The index of the window `used` counts in.
    current: u64,
    used: u32,
}

impl PhasedWindow {
    /// `phase` is taken modulo `window`.
    pub fn new(max: u32, window: Duration, origin: Instant, phase: Duration) -> Self {
        let window = window.max(Duration::from_millis(1));
        let phase_ns = phase.as_nanos() % window.as_nanos();
        let phase = Duration::from_nanos(u64::try_from(phase_ns).unwrap_or(0));
        Self {
            max: max.max(1),
            window,
            boundary: origin + phase,
            current: 0,
            used: 0,
        }
    }

    /// The index of the window holding `now` (the one before `boundary` is 0)
    /// and when it ends.
    fn locate(&self, now: Instant) -> (u64, Instant) {
        // `now + window - boundary` is never negative: the fake starts at
        // `origin`, at most one window before `boundary`.
        let since = (now + self.window).saturating_duration_since(self.boundary);
        let index = since.as_nanos() / self.window.as_nanos();
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        let end = self.boundary + self.window * u32::try_from(index).unwrap_or(u32::MAX);
        (index, end)
    }

    fn roll(&mut self, now: Instant) -> Instant {
        let (index, end) = self.locate(now);
        if index != self.current {
            self.current = index;
            self.used = 0;
        }
        end
    }

    /// `Err(retry_after)` (until the window ends) when one more event now
    /// would exceed the limit.
    pub fn peek(&mut self, now: Instant) -> Result<(), Duration> {
        let end = self.roll(now);
        if self.used >= self.max {
            Err(ceil_ms(end - now))
        } else {
            Ok(())
        }
    }

    pub fn take(&mut self, now: Instant) {
        self.roll(now);
        self.used = self.used.saturating_add(1);
    }

    /// Events in the current window.
    pub fn count(&mut self, now: Instant) -> usize {
        self.roll(now);
        usize::try_from(self.used).unwrap_or(usize::MAX)
    }
}

/// The most events ever seen in any sliding window of one length (the
/// `max_*` numbers in the stats). Memory is bounded by the events of one window.
#[derive(Debug, Clone)]
pub struct MaxInWindow {
    window: Duration,
    times: VecDeque<Instant>,
    max: usize,
}

impl MaxInWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            times: VecDeque::new(),
            max: 0,
        }
    }

    pub fn record(&mut self, now: Instant) {
        while self.times.front().is_some_and(|t| *t + self.window <= now) {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.max = self.max.max(self.times.len());
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn fixed_window_counts_down_and_resets() {
        let mut w = FixedWindow::new(5, Duration::from_secs(2));
        let start = Instant::now();
        assert_eq!(
            w.state(start),
            BucketState {
                limit: 5,
                remaining: 5,
                reset_after: Duration::from_secs(2)
            }
        );
        for left in (0..5).rev() {
            assert_eq!(w.peek(Instant::now()), Ok(()));
            w.take(Instant::now());
            assert_eq!(w.state(Instant::now()).remaining, left);
            tokio::time::advance(100 * MS).await;
        }
        // Five taken at 0..400 ms; the window opened at 0 and resets at 2 s.
        assert_eq!(w.peek(Instant::now()), Err(1500 * MS));
        assert_eq!(w.state(Instant::now()).reset_after, 1500 * MS);
        tokio::time::advance(1499 * MS).await;
        assert!(w.peek(Instant::now()).is_err());
        tokio::time::advance(MS).await;
        assert_eq!(w.peek(Instant::now()), Ok(()));
        assert!(w.idle(Instant::now()));
        w.take(Instant::now());
        assert_eq!(w.state(Instant::now()).remaining, 4);
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_requests_are_not_counted() {
        let mut w = FixedWindow::new(1, Duration::from_secs(1));
        w.take(Instant::now());
        for _ in 0..10 {
            assert!(w.peek(Instant::now()).is_err());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(w.state(Instant::now()).remaining, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_window_holds_30_per_minute() {
        let mut w = SlidingWindow::new(30, Duration::from_secs(60));
        for _ in 0..30 {
            assert_eq!(w.peek(Instant::now()), Ok(()));
            w.take(Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // 30 messages at 0..29 s; the first leaves the window at 60 s.
        assert_eq!(w.peek(Instant::now()), Err(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30) - MS).await;
        assert!(w.peek(Instant::now()).is_err());
        tokio::time::advance(MS).await;
        assert_eq!(w.peek(Instant::now()), Ok(()));
        w.take(Instant::now());
        assert_eq!(w.peek(Instant::now()), Err(Duration::from_secs(1)));
        assert_eq!(w.count(Instant::now()), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_window_sees_the_densest_stretch() {
        let mut m = MaxInWindow::new(Duration::from_secs(2));
        for gap in [0, 100, 100, 100, 1900, 100, 100, 100, 100, 100] {
            tokio::time::advance(gap * MS).await;
            m.record(Instant::now());
        }
        // Four in the first 300 ms, then six from 2.2 s to 2.7 s, when the
        // early ones have left the window.
        assert_eq!(m.max(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn phased_window_resets_on_its_boundaries() {
        let origin = Instant::now();
        let mut w = PhasedWindow::new(3, Duration::from_secs(60), origin, Duration::from_secs(45));
        // Windows: [-15 s, 45 s), [45 s, 105 s), …
        for _ in 0..3 {
            assert_eq!(w.peek(Instant::now()), Ok(()));
            w.take(Instant::now());
        }
        assert_eq!(w.peek(Instant::now()), Err(Duration::from_secs(45)));
        tokio::time::advance(Duration::from_secs(45) - MS).await;
        assert!(w.peek(Instant::now()).is_err());
        tokio::time::advance(MS).await;
        for _ in 0..3 {
            assert_eq!(w.peek(Instant::now()), Ok(()));
            w.take(Instant::now());
        }
        assert_eq!(w.count(Instant::now()), 3);
        assert_eq!(w.peek(Instant::now()), Err(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(w.count(Instant::now()), 0);
    }

    #[test]
    fn ceil_rounds_up_to_the_millisecond() {
        assert_eq!(ceil_ms(Duration::from_nanos(1)), MS);
        assert_eq!(ceil_ms(Duration::from_micros(1500)), 2 * MS);
        assert_eq!(ceil_ms(Duration::from_millis(7)), 7 * MS);
    }
}
