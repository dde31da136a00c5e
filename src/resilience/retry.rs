//! Retry policy per gRFC A6: attempts (the original included) are capped at
//! 5; only listed status codes are retried; never after response headers
//! arrived, nor a non-idempotent call the server may have executed; no
//! attempt starts after the caller's deadline; each retry is paid from the
//! [`RetryBudget`].

use std::time::Duration;

use tonic::Code;

use super::backoff::Backoff;
use super::budget::RetryBudget;
use crate::rt::Instant;

/// gRFC A6's cap on attempts, the original included.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts including the original (2..=5; larger values are capped).
    pub max_attempts: u32,
    /// Delays between attempts.
    pub backoff: Backoff,
    /// Status codes worth another attempt.
    pub retryable: Vec<Code>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            retryable: vec![Code::Unavailable],
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The status code.
    pub code: Code,
    /// The server sent response headers (then the call is committed).
    pub headers_received: bool,
    /// The request may have reached the server's handler (false only when it
    /// surely did not: refused connection, rejected by our own breaker).
    pub may_have_executed: bool,
}

/// A failed attempt of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Which attempt failed (1 = the original).
    pub number: u32,
    /// How it failed.
    pub failure: Failure,
    /// Whether the method is idempotent (or the call carries an idempotency key).
    pub idempotent: bool,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Stop and return the failure.
    GiveUp(GiveUp),
}

/// Why no retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The status code is not retryable.
    NotRetryable,
    /// Attempts reached the maximum.
    AttemptsExhausted,
    /// Response headers had arrived.
    Committed,
    /// Not idempotent and possibly executed.
    NotIdempotent,
    /// The next attempt would start after the deadline.
    Deadline,
    /// The retry budget is spent.
    BudgetExhausted,
}

impl RetryPolicy {
    /// The effective attempt limit (capped at [`MAX_ATTEMPTS_CAP`]).
    #[must_use]
    pub fn attempts_max(&self) -> u32 {
        self.max_attempts.clamp(1, MAX_ATTEMPTS_CAP)
    }

    /// Decides after `attempt` failed. `u` is uniform in `[0, 1)` for the
    /// jitter. Withdraws from `budget` only when deciding to retry.
    pub fn decide(
        &self,
        attempt: Attempt,
        now: Instant,
        deadline: Option<Instant>,
        u: f64,
        budget: &mut RetryBudget,
    ) -> Decision {
        let Attempt {
            number: attempts,
            failure,
            idempotent,
        } = attempt;
        let give_up = Decision::GiveUp;
        if failure.headers_received {
            return give_up(GiveUp::Committed);
        }
        if !self.retryable.contains(&failure.code) {
            return give_up(GiveUp::NotRetryable);
        }
        if failure.may_have_executed && !idempotent {
            return give_up(GiveUp::NotIdempotent);
        }
        if attempts >= self.attempts_max() {
            return give_up(GiveUp::AttemptsExhausted);
        }
        let delay = self.backoff.delay(attempts, u);
        if deadline.is_some_and(|d| now + delay >= d) {
            return give_up(GiveUp::Deadline);
        }
        if !budget.try_withdraw(now) {
            return give_up(GiveUp::BudgetExhausted);
        }
        debug_assert!(
            attempts < self.attempts_max() && self.attempts_max() <= MAX_ATTEMPTS_CAP,
            "retry invariant: no retry once the attempts reach the maximum"
        );
        debug_assert!(
            !failure.headers_received && (idempotent || !failure.may_have_executed),
            "retry invariant: never a retry of a committed call, nor of a non-idempotent \
             one that may have run"
        );
        debug_assert!(
            deadline.is_none_or(|d| now + delay < d),
            "retry invariant: no attempt starts after the caller's deadline"
        );
        Decision::RetryAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::budget::BudgetConfig;
    use proptest::prelude::*;

    fn code() -> impl Strategy<Value = Code> {
        prop_oneof![
            Just(Code::Unavailable),
            Just(Code::DeadlineExceeded),
            Just(Code::Internal),
            Just(Code::InvalidArgument)
        ]
    }

    proptest! {
        /// Drives whole calls (attempt, fail, decide, sleep) and checks the
        /// retry invariants of ARCHITECTURE.md ("Invariants the simulator
        /// checks") on each.
        #[test]
        fn retry_invariants(
            max in 0u32..10,
            failures in prop::collection::vec((code(), any::<bool>(), any::<bool>()), 1..10),
            idempotent in any::<bool>(),
            deadline_ms in prop::option::of(1u64..3_000),
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let policy = RetryPolicy { max_attempts: max, retryable: vec![Code::Unavailable, Code::DeadlineExceeded], ..RetryPolicy::default() };
            let mut budget = RetryBudget::new(BudgetConfig::default());
            let start = crate::rt::now();
            let deadline = deadline_ms.map(|ms| start + Duration::from_millis(ms));
            let mut now = start;
            let mut attempts = 0u32;
            budget.deposit(now);
            for (code, headers, executed) in failures {
                if let Some(d) = deadline { prop_assert!(now < d, "no attempt starts after the deadline"); }
                attempts += 1;
                prop_assert!(attempts <= policy.attempts_max() && attempts <= MAX_ATTEMPTS_CAP);
                let failure = Failure { code, headers_received: headers, may_have_executed: executed };
                let u: f64 = rng.gen_range(0.0..1.0);
                match policy.decide(Attempt { number: attempts, failure, idempotent }, now, deadline, u, &mut budget) {
                    Decision::RetryAfter(delay) => {
                        prop_assert!(!headers, "no retry after headers");
                        prop_assert!(idempotent || !executed, "non-idempotent and maybe executed: no retry");
                        prop_assert!(policy.retryable.contains(&code));
                        let nominal = policy.backoff.nominal(attempts);
                        prop_assert!(delay >= nominal.mul_f64(0.8) && delay <= nominal.mul_f64(1.2) + Duration::from_nanos(1));
                        now += delay;
                    }
                    Decision::GiveUp(_) => break,
                }
            }
        }
    }

    #[test]
    fn gives_up_for_each_reason() {
        let now = crate::rt::now();
        let p = RetryPolicy::default();
        let mut budget = RetryBudget::new(BudgetConfig {
            min_per_sec: 0,
            ratio: 0.0,
            ..BudgetConfig::default()
        });
        let retryable = Failure {
            code: Code::Unavailable,
            headers_received: false,
            may_have_executed: false,
        };
        assert_eq!(
            p.decide(
                Attempt {
                    number: 1,
                    failure: retryable,
                    idempotent: true
                },
                now,
                None,
                0.5,
                &mut budget
            ),
            Decision::GiveUp(GiveUp::BudgetExhausted)
        );
        let mut budget = RetryBudget::new(BudgetConfig::default());
        let d = |failure, idempotent, deadline, number, b: &mut RetryBudget| {
            p.decide(
                Attempt {
                    number,
                    failure,
                    idempotent,
                },
                now,
                deadline,
                0.5,
                b,
            )
        };
        assert_eq!(
            d(
                Failure {
                    headers_received: true,
                    ..retryable
                },
                true,
                None,
                1,
                &mut budget
            ),
            Decision::GiveUp(GiveUp::Committed)
        );
        assert_eq!(
            d(
                Failure {
                    code: Code::Internal,
                    ..retryable
                },
                true,
                None,
                1,
                &mut budget
            ),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            d(
                Failure {
                    may_have_executed: true,
                    ..retryable
                },
                false,
                None,
                1,
                &mut budget
            ),
            Decision::GiveUp(GiveUp::NotIdempotent)
        );
        assert_eq!(
            d(retryable, true, None, 3, &mut budget),
            Decision::GiveUp(GiveUp::AttemptsExhausted)
        );
        assert_eq!(
            d(
                retryable,
                true,
                Some(now + Duration::from_millis(50)),
                1,
                &mut budget
            ),
            Decision::GiveUp(GiveUp::Deadline)
        );
        assert!(matches!(
            d(
                Failure {
                    may_have_executed: true,
                    ..retryable
                },
                true,
                None,
                1,
                &mut budget
            ),
            Decision::RetryAfter(_)
        ));
    }
}
