//! The retry invariants of ARCHITECTURE.md ("Invariants the simulator
//! checks", the Retry rows), asserted on every decision
//! a retrier makes as it makes it (via its hook), not only as totals: the
//! attempt count is capped; no retry of a committed call, of a
//! non-idempotent call that may have run, or of a status the policy does
//! not retry; each backoff lies within its jittered bounds; no retry
//! starts past the caller's deadline.

use std::sync::{Arc, Mutex};

use streamgate::middleware::retry::{RetryEvent, RetryHook};
use streamgate::resilience::backoff::JITTER;
use streamgate::resilience::retry::{Decision, RetryPolicy};

/// Checks each decision against `policy`; counts what it saw.
pub(crate) struct RetryChecker {
    policy: RetryPolicy,
    pub(crate) decisions: u64,
    pub(crate) retries: u64,
}

impl RetryChecker {
    /// A checker and the hook that feeds it.
    pub(crate) fn hook(policy: RetryPolicy) -> (Arc<Mutex<Self>>, RetryHook) {
        let checker = Arc::new(Mutex::new(Self {
            policy,
            decisions: 0,
            retries: 0,
        }));
        let c = checker.clone();
        let hook: RetryHook = Arc::new(move |e: &RetryEvent| c.lock().expect("checker").observe(e));
        (checker, hook)
    }

    fn observe(&mut self, e: &RetryEvent) {
        self.decisions += 1;
        let max = self.policy.attempts_max();
        let a = e.attempt;
        assert!(
            (1..=max).contains(&a.number),
            "attempt {} outside 1..={max}",
            a.number
        );
        let Decision::RetryAfter(delay) = e.decision else {
            return;
        };
        self.retries += 1;
        assert!(a.number < max, "retried after the last attempt ({max})");
        assert!(!a.failure.headers_received, "retried a committed call");
        assert!(
            a.idempotent || !a.failure.may_have_executed,
            "retried a non-idempotent call that may have run"
        );
        assert!(
            self.policy.retryable.contains(&a.failure.code),
            "retried {:?}, which the policy does not retry",
            a.failure.code
        );
        let nominal = self.policy.backoff.nominal(a.number);
        assert!(
            delay >= nominal.mul_f64(JITTER.0) && delay <= nominal.mul_f64(JITTER.1),
            "backoff {delay:?} outside the jittered bounds of {nominal:?}"
        );
        if let Some(deadline) = e.deadline {
            assert!(
                e.at + delay < deadline,
                "a retry would start past the deadline"
            );
        }
    }
}
