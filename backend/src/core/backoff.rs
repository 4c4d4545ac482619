//! Exponential backoff with full jitter: the delay before retry `n` is uniform in
//! `[0, min(cap, base * 2^n)]`, so many instances retrying at once spread out.

use std::time::Duration;

/// Retry delays for one dependency. `reset` after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next retry; each call doubles the ceiling up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(fastrand::f64())
    }

    /// The ceiling the next delay is drawn under (for logs and tests).
    pub fn ceiling(&self) -> Duration {
        self.base
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.cap)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_below_a_doubling_capped_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let delay = b.next_delay();
            assert!(delay <= ceiling);
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(&ceilings[..4], &[500, 1000, 2000, 4000]);
        assert_eq!(*ceilings.last().unwrap(), 30_000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delays_vary() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.windows(2).any(|w| w[0] != w[1]));
    }
}
