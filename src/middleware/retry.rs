//! Retries at the typed level (message in, message out): tower's `Retry`
//! cannot wrap a tonic channel, since an HTTP request with a streaming body
//! cannot be cloned. [`Retrier::call`] re-issues a call per the
//! [`RetryPolicy`] (gRFC A6), paying each retry from a shared
//! [`RetryBudget`], and stamps `grpc-previous-rpc-attempts` on retries.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng as _;
use tonic::{Code, Status};

use super::metrics::Metrics;
use super::timeout::current_deadline;
use crate::resilience::budget::{BudgetConfig, RetryBudget};
use crate::resilience::retry::{Attempt, Decision, Failure, GiveUp, RetryPolicy};
use crate::rt;
use crate::rt::faults::{self, Bug};

/// The header a retry carries: how many attempts came before it.
pub const PREVIOUS_ATTEMPTS_HEADER: &str = "grpc-previous-rpc-attempts";

/// What a retrier did, for metrics and the simulation's checkers.
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Original calls.
    pub calls: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    /// Retries refused because the budget was spent.
    pub budget_exhausted: AtomicU64,
}

/// One decision of a retrier, as an observer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvent {
    /// The attempt that failed.
    pub attempt: Attempt,
    /// What the policy decided.
    pub decision: Decision,
    /// When.
    pub at: std::time::Instant,
    /// The call's deadline, if it has one.
    pub deadline: Option<std::time::Instant>,
    /// Original calls this retrier has seen so far, this one included (what
    /// the budget's deposits are made of).
    pub calls: u64,
}

/// Sees every decision as it is made (the simulation's retry checker).
pub type RetryHook = Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// Retries calls of one client per a policy and a shared budget.
#[derive(Clone)]
pub struct Retrier {
    policy: Arc<RetryPolicy>,
    budget: Arc<Mutex<RetryBudget>>,
    stats: Arc<RetryStats>,
    hook: Option<RetryHook>,
    /// The called service, for [`Retrier::with_metrics`]'s counts.
    target: &'static str,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Retrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("stats", &self.stats)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// How the retrier reads a failed attempt's status: UNAVAILABLE means the
/// call did not run (connection refused, breaker open, server shedding);
/// anything else may have run. Unary statuses arrive trailers-only, so no
/// response headers were committed.
#[must_use]
pub fn classify(status: &Status) -> Failure {
    Failure {
        code: status.code(),
        headers_received: false,
        may_have_executed: status.code() != Code::Unavailable,
    }
}

impl Retrier {
    /// A retrier with its own budget.
    #[must_use]
    pub fn new(policy: RetryPolicy, budget: BudgetConfig) -> Self {
        Self {
            policy: Arc::new(policy),
            budget: Arc::new(Mutex::new(RetryBudget::new(budget))),
            stats: Arc::default(),
            hook: None,
            target: "other",
            metrics: None,
        }
    }

    /// The same retrier, counting its retries and budget refusals in
    /// `metrics` (`streamgate_retries_total`,
    /// `streamgate_retry_budget_exhausted_total`) under its target.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// This retrier (the same policy, budget and counters), its calls
    /// counted under `target` (the service they go to; `other` until set).
    #[must_use]
    pub fn to(&self, target: &'static str) -> Self {
        Self {
            target,
            ..self.clone()
        }
    }

    /// The same retrier, reporting every decision to `hook`.
    #[must_use]
    pub fn with_hook(mut self, hook: RetryHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Counters of what it did.
    #[must_use]
    pub fn stats(&self) -> &RetryStats {
        &self.stats
    }

    fn budget(&self) -> std::sync::MutexGuard<'_, RetryBudget> {
        self.budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `attempt` until it succeeds or the policy gives up. `attempt`
    /// gets the number of attempts before this one (0 for the original) and
    /// must build a fresh request each time, adding that number as
    /// [`PREVIOUS_ATTEMPTS_HEADER`] when it is not 0 (see [`stamp`]). The
    /// current deadline (see `timeout::current_deadline`) bounds the retries.
    ///
    /// # Errors
    /// The last attempt's status.
    pub async fn call<T, F, Fut>(&self, idempotent: bool, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.budget().deposit(rt::now());
        let deadline = current_deadline();
        let mut number = 1;
        loop {
            let status = match attempt(number - 1).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let failed = Attempt {
                number,
                failure: classify(&status),
                idempotent,
            };
            let u = rt::rng().gen_range(0.0..1.0);
            let now = rt::now();
            let decision = if faults::injected(Bug::RetryWithoutBudget) {
                let mut unlimited = RetryBudget::new(BudgetConfig {
                    ttl: std::time::Duration::from_secs(1),
                    min_per_sec: u32::MAX,
                    ratio: 0.0,
                });
                self.policy.decide(failed, now, deadline, u, &mut unlimited)
            } else {
                self.policy
                    .decide(failed, now, deadline, u, &mut self.budget())
            };
            if let Some(hook) = &self.hook {
                hook(&RetryEvent {
                    attempt: failed,
                    decision,
                    at: now,
                    deadline,
                    calls: self.stats.calls.load(Ordering::Relaxed),
                });
            }
            match decision {
                Decision::RetryAfter(delay) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if let Some(metrics) = &self.metrics {
                        metrics.retried(self.target);
                    }
                    rt::sleep(delay).await;
                    number += 1;
                }
                Decision::GiveUp(why) => {
                    if why == GiveUp::BudgetExhausted {
                        self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                        if let Some(metrics) = &self.metrics {
                            metrics.retry_refused(self.target);
                        }
                    }
                    return Err(status);
                }
            }
        }
    }
}

/// Adds [`PREVIOUS_ATTEMPTS_HEADER`] to a retry's request.
pub fn stamp<T>(request: &mut tonic::Request<T>, previous: u32) {
    if previous > 0 {
        request
            .metadata_mut()
            .insert(PREVIOUS_ATTEMPTS_HEADER, previous.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn retrier(max_attempts: u32) -> Retrier {
        Retrier::new(
            RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            },
            BudgetConfig::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_then_succeeds_with_the_header() {
        let r = retrier(3);
        let mut seen = Vec::new();
        let out = r
            .call(false, |previous| {
                let mut req = tonic::Request::new(());
                stamp(&mut req, previous);
                seen.push(
                    req.metadata()
                        .get(PREVIOUS_ATTEMPTS_HEADER)
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                async move {
                    if previous < 2 {
                        Err(Status::unavailable("down"))
                    } else {
                        Ok(previous)
                    }
                }
            })
            .await;
        assert_eq!(out.unwrap(), 2);
        assert_eq!(seen, [None, Some("1".to_owned()), Some("2".to_owned())]);
        assert_eq!(r.stats().retries.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_what_may_have_run_unless_idempotent() {
        let r = retrier(5);
        let mut attempts = 0;
        let err = r
            .call(false, |_| {
                attempts += 1;
                async { Err::<(), _>(Status::deadline_exceeded("slow")) }
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), attempts), (Code::DeadlineExceeded, 1));
        let mut attempts = 0;
        let _ = r
            .call(true, |_| {
                attempts += 1;
                async { Err::<(), _>(Status::unavailable("down")) }
            })
            .await;
        assert_eq!(attempts, 5, "idempotent and retryable: up to the cap");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outage_stays_within_the_budget() {
        let budget = BudgetConfig {
            ttl: Duration::from_secs(10),
            min_per_sec: 1,
            ratio: 0.1,
        };
        let r = Retrier::new(
            RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            },
            budget,
        );
        let mut attempts = 0u64;
        let requests = 200u64;
        let started = rt::now();
        for _ in 0..requests {
            let _ = r
                .call(true, |_| {
                    attempts += 1;
                    async { Err::<(), _>(Status::unavailable("down")) }
                })
                .await;
        }
        // The floor of min_per_sec is granted once per window of `ttl`.
        let windows = ((rt::now() - started).as_secs_f64() / budget.ttl.as_secs_f64()).ceil() + 1.0;
        let floor = f64::from(budget.min_per_sec) * budget.ttl.as_secs_f64() * windows;
        let bound = (1.0 + budget.ratio) * requests as f64 + floor;
        assert!(
            attempts as f64 <= bound,
            "{attempts} attempts > {bound}: a retry storm"
        );
        assert!(r.stats().budget_exhausted.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_and_refusals_are_counted_per_target() {
        let metrics = Metrics::default();
        let base = Retrier::new(
            RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            },
            BudgetConfig {
                ttl: Duration::from_secs(10),
                min_per_sec: 1,
                ratio: 0.0,
            },
        )
        .with_metrics(metrics.clone());
        let worker = base.to("worker");
        for _ in 0..30 {
            let _ = worker
                .call(true, |_| async {
                    Err::<(), _>(Status::unavailable("down"))
                })
                .await;
        }
        let (retries, refused) = metrics.retries("worker");
        assert_eq!(retries, worker.stats().retries.load(Ordering::Relaxed));
        assert_eq!(
            refused,
            worker.stats().budget_exhausted.load(Ordering::Relaxed)
        );
        assert!(
            retries > 0 && refused > 0,
            "{retries} retries, {refused} refused"
        );
        assert_eq!(metrics.retries("streaming"), (0, 0));
        assert_eq!(
            metrics.retries("other"),
            (0, 0),
            "the base shares no counts"
        );
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "streamgate_retries_total{{target=\"worker\"}} {retries}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "streamgate_retry_budget_exhausted_total{{target=\"worker\"}} {refused}\n"
            )),
            "{text}"
        );
    }
}
