//! Exponential backoff with jitter, as an iterator of durations with [`Backoff::reset`]: the
//! one retry policy of the controller's work queues, the watchers, leader election and the
//! node agent. Uses no I/O; it lives here because every binary already depends on the store.
//!
//! Invariant: the `n`-th delay (from 0) is `min(initial * factor^n, max)` scaled by a random
//! factor in `[1 - jitter, 1]`, so retries of many keys spread out instead of firing together.

use std::time::Duration;

/// An endless iterator of retry delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
    current: Option<Duration>,
}

impl Backoff {
    /// Starts at `initial`, doubles each time, never exceeds `max`, 50% jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2.0,
            jitter: 0.5,
            current: None,
        }
    }

    /// Sets the jitter fraction (0 = deterministic, 1 = anything from 0 to the delay).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Sets the growth factor (at least 1).
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Starts over from the initial delay.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s: the controller's per-key retry policy.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = match self.current {
            None => self.initial,
            Some(c) => c.mul_f64(self.factor).min(self.max),
        };
        self.current = Some(base);
        if self.jitter == 0.0 {
            return Some(base);
        }
        let scale = 1.0 - self.jitter * rand::random::<f64>();
        Some(base.mul_f64(scale))
    }
}

/// `d` scaled by a random factor between 0.5 and 1.5, so that many agents started together
/// (a hollow fleet) do not all do periodic work at the same instant.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_should_double_up_to_the_cap_and_reset() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(500)).with_jitter(0.0);
        let got: Vec<u64> = b.by_ref().take(5).map(|d| d.as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn backoff_jitter_should_stay_within_bounds() {
        let b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(60)).with_jitter(0.5);
        for (n, d) in b.take(6).enumerate() {
            let base = 1000u128 << n;
            assert!(
                d.as_millis() <= base && d.as_millis() >= base / 2,
                "{n}: {d:?}"
            );
        }
    }

    #[test]
    fn jittered_should_stay_within_half_and_one_and_a_half() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(15),
                "{d:?}"
            );
        }
    }
}
