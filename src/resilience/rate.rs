//! Token-bucket rate limiter: `burst` tokens, refilled at `per_sec`.

use std::time::Duration;

use crate::rt::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_sec` (both at least 1e-9).
    #[must_use]
    pub fn new(burst: u32, per_sec: f64, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            per_sec: per_sec.max(1e-9),
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes one token, or says how long until one is available.
    ///
    /// # Errors
    /// The wait until the next token.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
    }

    /// Returns a token taken for something that turned out not to count
    /// (never past `burst`).
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Over any run, admitted <= burst + per_sec * elapsed; and a refused
        /// call's retry-after is enough to get a token.
        #[test]
        fn never_exceeds_rate(burst in 1u32..50, per_sec in 0.5f64..500.0, steps in prop::collection::vec(0u64..200, 1..400)) {
            let start = crate::rt::now();
            let mut b = TokenBucket::new(burst, per_sec, start);
            let mut now = start;
            let mut admitted = 0u64;
            for dt in steps {
                now += Duration::from_millis(dt);
                match b.try_take(now) {
                    Ok(()) => admitted += 1,
                    Err(wait) => {
                        let mut probe = b.clone();
                        prop_assert!(probe.try_take(now + wait + Duration::from_micros(1)).is_ok());
                    }
                }
                let bound = f64::from(burst) + per_sec * (now - start).as_secs_f64();
                prop_assert!(admitted as f64 <= bound + 1e-6);
            }
        }
    }
}
