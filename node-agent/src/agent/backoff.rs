//! Exponential backoff with jitter, as an iterator of durations with `reset()`.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Doubles from `min` up to `max`; each delay is jittered to between half and all of it.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    /// A backoff from `min` to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff {
            min,
            max: max.max(min),
            next: min,
            seed,
        }
    }

    /// Starts over at `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: cheap and good enough to spread retries of many agents.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        0.5 + (self.seed % 1000) as f64 / 2000.0
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(base.mul_f64(self.jitter()))
    }
}

/// `d` scaled by a random factor between 0.5 and 1.5, so that many agents started together
/// (a hollow fleet) do not all do periodic work at the same instant.
pub fn jittered(d: Duration) -> Duration {
    // jitter() is in [0.5, 1): 2j - 0.5 is in [0.5, 1.5).
    d.mul_f64(2.0 * Backoff::new(d, d).jitter() - 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_should_grow_to_its_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = b.by_ref().take(6).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[5] >= Duration::from_millis(500) && delays[5] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(100));
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
