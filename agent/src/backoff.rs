//! Waits that double after each failure, up to a cap: the shipper's retries while the collector
//! is down, and the supervisor's retries of a JVM it cannot sample.

use std::time::Duration;

/// `base` doubled `step` times (at most 16 times), capped at `max`.
pub fn doubled(base: Duration, step: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << step.min(16)).min(max)
}

/// Exponential backoff: base, 2×base, 4×base … up to max.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub fn fail(&mut self) -> Duration {
        let wait = doubled(self.base, self.failures, self.max);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..6).map(|_| b.fail().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }
}
