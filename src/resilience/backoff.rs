//! Exponential backoff per gRFC A6: `min(initial * multiplier^(n-1), max)`,
//! times a jitter in `[0.8, 1.2]`.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// Growth per retry.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

/// Jitter bounds, as gRFC A6 gives them.
pub const JITTER: (f64, f64) = (0.8, 1.2);

impl Backoff {
    /// The nominal delay before retry `n` (1 = the first retry).
    #[must_use]
    pub fn nominal(&self, n: u32) -> Duration {
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(secs).min(self.max)
    }

    /// The delay before retry `n` with jitter; `u` is uniform in `[0, 1)`.
    #[must_use]
    pub fn delay(&self, n: u32, u: f64) -> Duration {
        let factor = JITTER.0 + (JITTER.1 - JITTER.0) * u.clamp(0.0, 1.0);
        let nominal = self.nominal(n);
        debug_assert!(
            nominal <= self.max,
            "backoff invariant: the nominal delay never exceeds max"
        );
        let delay = nominal.mul_f64(factor);
        debug_assert!(
            delay >= nominal.mul_f64(JITTER.0) && delay <= nominal.mul_f64(JITTER.1),
            "backoff invariant: the delay stays within the jitter bounds"
        );
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delay_within_jitter_bounds(n in 1u32..100, u in 0.0f64..1.0, initial_ms in 1u64..1000, max_ms in 1u64..60_000, mult in 1.0f64..4.0) {
            let b = Backoff { initial: Duration::from_millis(initial_ms), max: Duration::from_millis(max_ms), multiplier: mult };
            let nominal = b.nominal(n);
            prop_assert!(nominal <= b.max);
            prop_assert!(n > 1 || nominal == b.initial.min(b.max));
            let d = b.delay(n, u);
            prop_assert!(d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2) + Duration::from_nanos(1));
            prop_assert!(b.nominal(n + 1) >= nominal, "never shrinks");
        }
    }
}
