//! The per-email log-in limit: a token bucket per email, in a bounded map,
//! so password guessing against one account is slow whatever the caller's
//! address. Checked before the (costly) password check.

use std::time::Duration;

use crate::HashMap;

use crate::resilience::rate::TokenBucket;
use crate::rt::Instant;

/// Log-in attempts per email in a burst.
pub const LOGIN_BURST: u32 = 10;
/// Log-in attempts per email per second afterwards (one per 6 s).
pub const LOGIN_PER_SEC: f64 = 1.0 / 6.0;
/// Most emails tracked at once.
pub const MAX_TRACKED: usize = 10_000;

/// After this long without attempts a bucket is full again, so forgetting
/// it changes nothing.
fn refill_time() -> Duration {
    Duration::from_secs_f64(f64::from(LOGIN_BURST) / LOGIN_PER_SEC)
}

/// Buckets by (lower-cased) email.
#[derive(Debug)]
pub struct LoginLimiter {
    buckets: HashMap<String, (TokenBucket, Instant)>,
    max_tracked: usize,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(MAX_TRACKED)
    }
}

impl LoginLimiter {
    /// Tracks at most `max_tracked` emails (at least 1).
    #[must_use]
    pub fn new(max_tracked: usize) -> Self {
        Self {
            buckets: HashMap::default(),
            max_tracked: max_tracked.max(1),
        }
    }

    /// Counts an attempt for `email` at `now`.
    ///
    /// # Errors
    /// The wait until the next attempt is allowed.
    pub fn attempt(&mut self, email: &str, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(email) && self.buckets.len() >= self.max_tracked {
            self.make_room(now);
        }
        let (bucket, last) = self
            .buckets
            .entry_ref(email)
            .or_insert_with(|| (TokenBucket::new(LOGIN_BURST, LOGIN_PER_SEC, now), now));
        *last = (*last).max(now);
        bucket.try_take(now)
    }

    /// Forgets refilled buckets; if none is, the least recently used one.
    fn make_room(&mut self, now: Instant) {
        let idle = refill_time();
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < idle);
        if self.buckets.len() >= self.max_tracked {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.buckets.remove(&k);
            }
        }
    }

    /// Emails tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_email_is_limited_others_are_not() {
        let t0 = crate::rt::now();
        let mut l = LoginLimiter::default();
        for _ in 0..LOGIN_BURST {
            assert!(l.attempt("a@x.io", t0).is_ok());
        }
        let wait = l.attempt("a@x.io", t0).expect_err("limited");
        assert!(wait <= Duration::from_secs(6), "{wait:?}");
        assert!(l.attempt("b@x.io", t0).is_ok());
        assert!(l.attempt("a@x.io", t0 + Duration::from_secs(7)).is_ok());
    }

    #[test]
    fn the_map_stays_bounded() {
        let t0 = crate::rt::now();
        let mut l = LoginLimiter::new(3);
        for i in 0..100u64 {
            let _ = l.attempt(&format!("u{i}@x.io"), t0 + Duration::from_millis(i));
            assert!(l.len() <= 3);
        }
        // A limited email keeps its bucket while fresher ones come and go
        // only if it is not the least recently used; refilled ones go first.
        let mut l = LoginLimiter::new(2);
        let later = t0 + refill_time() + Duration::from_secs(1);
        assert!(l.attempt("old@x.io", t0).is_ok());
        assert!(l.attempt("hot@x.io", later).is_ok());
        assert!(l.attempt("new@x.io", later).is_ok());
        assert_eq!(l.len(), 2);
    }
}
