//! The invariant checkers of ARCHITECTURE.md ("Invariants the simulator
//! checks": breaker, retry, budget, one job per video), fed by hooks inside
//! every node's client pool and by a tap on the bus, asserted as events
//! happen: a violation is recorded on the timeline and fails the run at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streamgate::client::PoolConfig;
use streamgate::client::balanced::{Outcome, OutcomeHook, TransitionHook};
use streamgate::middleware::policy::CallPolicy;
use streamgate::middleware::retry::{RetryEvent, RetryHook};
use streamgate::resilience::breaker::{BreakerConfig, Transition};
use streamgate::resilience::budget::BudgetConfig;
use streamgate::resilience::retry::{Decision, RetryPolicy};
use streamgate::rt::coverage;

use super::timeline::{Kind, Timeline};
use crate::retry_check::RetryChecker;

/// The retry budget every node's pool uses here: no floor, so retries stay
/// within a fifth of the calls and a storm shows within one window even at
/// the workload's low rate.
pub const BUDGET: BudgetConfig = BudgetConfig {
    ttl: Duration::from_secs(10),
    min_per_sec: 0,
    ratio: 0.2,
};

/// The breakers of every node's pool here: the default's shape with small
/// numbers (3 failures in a row or half of at least 3 calls, open 1 s and
/// growing), so that they trip, probe and reopen at the workload's rate.
pub const BREAKER: BreakerConfig = BreakerConfig {
    consecutive_failures: 3,
    failure_rate: 0.5,
    window: Duration::from_secs(10),
    min_calls: 3,
    open_base: Duration::from_secs(1),
    open_max: Duration::from_secs(10),
    open_multiplier: 2.0,
    jitter: 0.1,
    half_open_probes: 1,
};

/// One instance's breaker as the checker follows it.
#[derive(Debug, Default)]
struct Followed {
    /// The open interval of the current failure streak.
    streak: Option<Duration>,
    /// Open-to-half-open moves in the current open period.
    probing: u32,
    /// Half-open now.
    half_open: bool,
}

/// Breaker invariants, per instance, from transitions and call outcomes.
#[derive(Debug)]
struct BreakerCheck {
    lane: String,
    cfg: BreakerConfig,
    followed: HashMap<String, Followed>,
}

impl BreakerCheck {
    fn transition(&mut self, id: &str, t: Transition) -> Result<(), String> {
        let f = self.followed.entry(id.to_owned()).or_default();
        match t {
            Transition::Tripped {
                window_calls,
                interval,
            } => {
                if window_calls < self.cfg.min_calls {
                    return Err(format!(
                        "breaker {id} tripped with {window_calls} < {} calls in its window",
                        self.cfg.min_calls
                    ));
                }
                *f = Followed {
                    streak: Some(interval),
                    ..Followed::default()
                };
            }
            Transition::Reopened { interval } => {
                let Some(prev) = f.streak else {
                    return Err(format!("breaker {id} reopened without having tripped"));
                };
                if interval < prev {
                    return Err(format!(
                        "breaker {id}: open interval shrank {prev:?} -> {interval:?}"
                    ));
                }
                *f = Followed {
                    streak: Some(interval),
                    ..Followed::default()
                };
            }
            Transition::Probing => {
                f.probing += 1;
                f.half_open = true;
                if f.probing > 1 {
                    return Err(format!(
                        "breaker {id}: open to half-open twice in one open period"
                    ));
                }
            }
            Transition::Closed => *f = Followed::default(),
        }
        Ok(())
    }

    fn outcome(&mut self, id: &str, o: Outcome) -> Result<(), String> {
        if let Some(t) = o.transition {
            self.transition(id, t)?;
        }
        if o.probe && !o.success && !matches!(o.transition, Some(Transition::Reopened { .. })) {
            return Err(format!(
                "breaker {id}: a half-open probe failed and the breaker did not reopen"
            ));
        }
        Ok(())
    }
}

/// The retry budget, checked at every retry: retries in the last `ttl` stay
/// within `min_per_sec * ttl + ratio * calls in the last ttl`.
#[derive(Debug, Default)]
struct BudgetCheck {
    /// (when, original calls so far), one sample per decision.
    samples: VecDeque<(Instant, u64)>,
    retries: VecDeque<Instant>,
}

impl BudgetCheck {
    fn observe(&mut self, e: &RetryEvent) -> Result<(), String> {
        let ttl = BUDGET.ttl;
        self.samples.push_back((e.at, e.calls));
        if !matches!(e.decision, Decision::RetryAfter(_)) {
            return Ok(());
        }
        self.retries.push_back(e.at);
        while self.retries.front().is_some_and(|t| e.at - *t >= ttl) {
            self.retries.pop_front();
        }
        // Calls made before the window began (the latest sample at or
        // before its start; 0 when the run is younger than the window):
        // their deposits have expired.
        let before = match e.at.checked_sub(ttl) {
            None => 0,
            Some(start) => {
                while self.samples.len() >= 2 && self.samples[1].0 <= start {
                    self.samples.pop_front();
                }
                match self.samples.front() {
                    Some(&(at, calls)) if at <= start => calls,
                    _ => 0,
                }
            }
        };
        let deposits = e.calls.saturating_sub(before);
        let allowance = u64::from(BUDGET.min_per_sec) * BUDGET.ttl.as_secs()
            + (deposits as f64 * BUDGET.ratio).floor() as u64;
        let retries = self.retries.len() as u64;
        if retries > allowance {
            return Err(format!(
                "{retries} retries in {ttl:?} > budget {allowance} ({deposits} calls): a retry storm"
            ));
        }
        Ok(())
    }
}

/// The call policy every swarm node serves under: StreamGate's own.
pub fn call_policy() -> Arc<CallPolicy> {
    Arc::new(
        CallPolicy::parse(include_str!("../../config/call-policy.toml"))
            .expect("config/call-policy.toml parses"),
    )
}

/// The breaker transitions as the property report names them.
pub const TRANSITIONS: [&str; 4] = [
    "breaker: closed -> open",
    "breaker: open -> half-open",
    "breaker: half-open -> open",
    "breaker: half-open -> closed",
];

fn transition_name(t: Transition) -> &'static str {
    match t {
        Transition::Tripped { .. } => TRANSITIONS[0],
        Transition::Probing => TRANSITIONS[1],
        Transition::Reopened { .. } => TRANSITIONS[2],
        Transition::Closed => TRANSITIONS[3],
    }
}

/// The checkers fed by the pools' hooks, as the property report names them.
pub const BREAKER_CHECK: &str = "checker: breaker (every call outcome)";
/// See [`BREAKER_CHECK`].
pub const RETRY_CHECK: &str = "checker: retry decision and budget (every retry decision)";

/// The pool settings of one node start, calling as `identity` (its
/// service) under the call policy, with every hook wired to the checkers
/// and the timeline of `lane`.
pub fn pool_config(lane: &str, identity: &str, timeline: &Timeline) -> PoolConfig {
    let mut base = crate::common::pool(identity);
    base.policy = Some(call_policy());
    let breaker = Arc::new(Mutex::new(BreakerCheck {
        lane: lane.to_owned(),
        cfg: BREAKER,
        followed: HashMap::new(),
    }));
    let (tl, l) = (timeline.clone(), lane.to_owned());
    let on_transition: TransitionHook = Arc::new(move |id: &str, t| {
        coverage::hit(transition_name(t));
        tl.record(&l, Kind::State, format_args!("breaker {id}: {t:?}"));
    });
    let (tl, b) = (timeline.clone(), breaker.clone());
    let on_outcome: OutcomeHook = Arc::new(move |id: &str, o| {
        coverage::hit(BREAKER_CHECK);
        let mut check = b.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = check.outcome(id, o) {
            let lane = check.lane.clone();
            drop(check);
            tl.violated(&lane, e);
        }
    });
    let policy = RetryPolicy::default();
    let (decisions, decision_hook) = RetryChecker::hook(policy.clone());
    drop(decisions);
    let budget = Arc::new(Mutex::new(BudgetCheck::default()));
    let (tl, l) = (timeline.clone(), lane.to_owned());
    let on_retry: RetryHook = Arc::new(move |e: &RetryEvent| {
        coverage::hit(RETRY_CHECK);
        decision_hook(e);
        if let Decision::RetryAfter(d) = e.decision {
            tl.record(
                &l,
                Kind::State,
                format_args!(
                    "retry {} after {d:?} ({:?})",
                    e.attempt.number, e.attempt.failure.code
                ),
            );
        }
        let result = budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(e);
        if let Err(msg) = result {
            tl.violated(&l, msg);
        }
    });
    PoolConfig {
        breaker: BREAKER,
        on_transition: Some(on_transition),
        on_outcome: Some(on_outcome),
        retry: policy,
        budget: BUDGET,
        on_retry: Some(on_retry),
        ..base
    }
}

/// One success per job: a job's JobCompleted events (told apart by event
/// id: a redelivered event is the same one) are one. Two workers that ran
/// one attempt (its message came back to the other after the ack wait)
/// must not both record a success.
#[derive(Debug, Default)]
pub struct OneSuccessPerJob {
    completed: HashMap<String, String>,
}

impl OneSuccessPerJob {
    /// Checks one JobCompleted event `event_id` of `job_id`.
    pub fn observe(&mut self, job_id: &str, event_id: &str) -> Result<(), String> {
        match self.completed.get(job_id) {
            Some(first) if first != event_id => Err(format!(
                "job {job_id} succeeded twice (events {first} and {event_id})"
            )),
            _ => {
                self.completed
                    .insert(job_id.to_owned(), event_id.to_owned());
                Ok(())
            }
        }
    }
}

/// One transcode job per video: every JobSubmitted seen on the bus names
/// the video's one job (a handler that is not idempotent makes more).
#[derive(Debug, Default)]
pub struct OneJobPerVideo {
    jobs: HashMap<String, String>,
    /// JobSubmitted events seen.
    pub seen: u64,
}

impl OneJobPerVideo {
    /// Checks one JobSubmitted.
    pub fn observe(&mut self, video_id: &str, job_id: &str) -> Result<(), String> {
        self.seen += 1;
        match self.jobs.get(video_id) {
            Some(first) if first != job_id => Err(format!(
                "video {video_id} got a second transcode job ({first}, then {job_id})"
            )),
            _ => {
                self.jobs.insert(video_id.to_owned(), job_id.to_owned());
                Ok(())
            }
        }
    }
}
