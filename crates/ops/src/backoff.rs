//! Exponential backoff with full jitter, the one retry schedule every agentmon
//! component uses.
//!
//! Full jitter (a uniformly random delay in `[0, min(cap, base * 2^attempt)]`) is
//! what AWS's "Exponential Backoff and Jitter" analysis found to spread retries of
//! many clients best; a fleet of watchers retrying a recovering Discord or
//! bot-bridge must not arrive in lock-step.

use std::time::Duration;

use rand::Rng;

/// A retry schedule. Cheap to copy; holds no state: the caller counts attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest ceiling any retry's delay can reach.
    pub cap: Duration,
}

impl Default for Backoff {
    /// The contract's delivery schedule: base 250 ms, cap 30 s.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The ceiling for retry number `attempt` (0-based): `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay for retry number `attempt` (0-based), full jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(250));
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(3), Duration::from_secs(2));
        assert_eq!(b.ceiling(7), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_spread() {
        let b = Backoff::default();
        let delays: Vec<_> = (0..200).map(|_| b.delay(4)).collect();
        assert!(delays.iter().all(|d| *d <= b.ceiling(4)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "full jitter should spread delays");
    }
}
