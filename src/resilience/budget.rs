//! Retry budget (as in Finagle and tower): retries may use `ratio` of the
//! requests seen in the last `ttl`, plus `min_per_sec` to keep low-traffic
//! clients able to retry. It makes a retry storm impossible.

use std::collections::VecDeque;
use std::time::Duration;

use crate::rt::Instant;

/// Budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// How long a request's deposit counts.
    pub ttl: Duration,
    /// Retries allowed per second regardless of traffic.
    pub min_per_sec: u32,
    /// Retries allowed per request (0.2 = one retry per five requests).
    pub ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            ratio: 0.2,
        }
    }
}

/// Most requests or retries remembered; beyond this the oldest are forgotten
/// (which only ever lowers the budget).
pub const MAX_TRACKED: usize = 1 << 20;

/// A retry budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    deposits: VecDeque<Instant>,
    withdrawals: VecDeque<Instant>,
}

impl RetryBudget {
    /// A budget with `cfg`.
    #[must_use]
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            cfg,
            deposits: VecDeque::new(),
            withdrawals: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        let ttl = self.cfg.ttl;
        for q in [&mut self.deposits, &mut self.withdrawals] {
            while q
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) >= ttl)
            {
                q.pop_front();
            }
            debug_assert!(
                q.front()
                    .is_none_or(|at| now.saturating_duration_since(*at) < ttl),
                "budget invariant: only the last ttl counts"
            );
        }
    }

    /// Records an original request.
    pub fn deposit(&mut self, now: Instant) {
        self.prune(now);
        if self.deposits.len() >= MAX_TRACKED {
            self.deposits.pop_front();
        }
        self.deposits.push_back(now);
        debug_assert!(
            self.deposits.len() <= MAX_TRACKED,
            "budget invariant: at most MAX_TRACKED requests are remembered"
        );
    }

    /// How many retries the window allows in all.
    #[must_use]
    pub fn allowance(&self) -> u64 {
        let floor = u64::from(self.cfg.min_per_sec).saturating_mul(self.cfg.ttl.as_secs().max(1));
        floor + (self.deposits.len() as f64 * self.cfg.ratio.max(0.0)).floor() as u64
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.prune(now);
        if self.withdrawals.len() as u64 >= self.allowance() {
            return false;
        }
        self.withdrawals.push_back(now);
        debug_assert!(
            self.withdrawals.len() as u64 <= self.allowance(),
            "budget invariant: retries in the window never exceed its allowance ({} > {})",
            self.withdrawals.len(),
            self.allowance()
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// At every retry taken: retries in the last `ttl` <= ratio * requests
        /// in the last `ttl` + min_per_sec * ttl. (Deposits that age out later
        /// do not revoke retries already taken.)
        #[test]
        fn retries_stay_within_budget(steps in prop::collection::vec((0u64..500, 0u8..3), 1..500), ratio in 0.0f64..1.0, min in 0u32..5) {
            let cfg = BudgetConfig { ttl: Duration::from_secs(2), min_per_sec: min, ratio };
            let mut b = RetryBudget::new(cfg);
            let mut now = crate::rt::now();
            let mut log: Vec<(Instant, bool)> = Vec::new(); // (when, is_retry)
            for (dt, what) in steps {
                now += Duration::from_millis(dt);
                if what == 0 {
                    b.deposit(now);
                    log.push((now, false));
                } else if b.try_withdraw(now) {
                    log.push((now, true));
                    let in_window = |retry: bool| log.iter().filter(|(at, r)| *r == retry && now.duration_since(*at) < cfg.ttl).count() as f64;
                    let bound = (ratio * in_window(false)).floor() + f64::from(min) * 2.0;
                    prop_assert!(in_window(true) <= bound, "{} retries > {bound}", in_window(true));
                }
            }
        }
    }

    #[test]
    fn full_outage_attempts_are_bounded() {
        // 1000 requests over 10 s, each failing and retried as long as the
        // budget allows: total attempts <= (1 + ratio) * requests + min * ttl.
        let cfg = BudgetConfig::default();
        let mut b = RetryBudget::new(cfg);
        let start = crate::rt::now();
        let (mut attempts, requests) = (0u64, 1000u64);
        for i in 0..requests {
            let now = start + Duration::from_millis(i * 10);
            b.deposit(now);
            attempts += 1;
            while attempts < 100_000 && b.try_withdraw(now) {
                attempts += 1;
            }
        }
        let bound = (1.0 + cfg.ratio) * requests as f64
            + f64::from(cfg.min_per_sec) * cfg.ttl.as_secs_f64();
        assert!(attempts as f64 <= bound, "{attempts} attempts > {bound}");
    }
}
