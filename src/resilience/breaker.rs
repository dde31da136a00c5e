//! Circuit breaker: trips on consecutive failures or on a failure rate over
//! a sliding window (never below a minimum number of calls), stays open for
//! an interval that grows with jitter while failures continue, then admits
//! a bounded number of half-open probes.
//!
//! The classic shape, five failures in a row open it for 30 s, is
//! [`BreakerConfig::new(5, 30s)`]; the pool's default adds the rate rule.

use std::collections::VecDeque;
use std::time::Duration;

use crate::rt::Instant;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Trip after this many failures in a row.
    pub consecutive_failures: u32,
    /// Trip when this share of the window's calls failed (0..=1; above 1 disables).
    pub failure_rate: f64,
    /// Length of the sliding window of outcomes.
    pub window: Duration,
    /// Never trip with fewer calls than this in the window.
    pub min_calls: u32,
    /// First open interval.
    pub open_base: Duration,
    /// Open intervals never exceed this (before jitter).
    pub open_max: Duration,
    /// Growth of the open interval per failed probe.
    pub open_multiplier: f64,
    /// Up to this fraction is added to each open interval at random.
    pub jitter: f64,
    /// Probes admitted at once when half-open; as many successes close it.
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// `threshold` consecutive failures trip it for `open`; the rate rule is
    /// off.
    #[must_use]
    pub fn new(threshold: u32, open: Duration) -> Self {
        Self {
            consecutive_failures: threshold.max(1),
            failure_rate: 2.0,
            window: Duration::from_secs(60),
            min_calls: threshold.max(1),
            open_base: open,
            open_max: open.saturating_mul(10),
            open_multiplier: 2.0,
            jitter: 0.1,
            half_open_probes: 1,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            open_base: Duration::from_secs(5),
            ..Self::new(5, Duration::from_secs(5))
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When probing may start.
        until: Instant,
        /// The interval this open period lasts.
        interval: Duration,
    },
    /// Up to `half_open_probes` calls are let through.
    HalfOpen {
        /// Probes admitted and not yet reported.
        in_flight: u32,
        /// Probes that succeeded.
        successes: u32,
    },
}

/// What changed, for metrics and the simulation's checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Closed to open, with the window's call count when it tripped.
    Tripped {
        /// Calls in the window at the time.
        window_calls: u32,
        /// The open interval chosen.
        interval: Duration,
    },
    /// Open to half-open.
    Probing,
    /// Half-open back to open after a failed probe.
    Reopened {
        /// The new (not shorter) interval.
        interval: Duration,
    },
    /// Half-open to closed.
    Closed,
}

/// The answer to [`Breaker::try_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead; report the outcome with this permit.
    Yes(Permit),
    /// Refused; the breaker may admit again after this long.
    No {
        /// Time left in the open interval (zero when half-open is full).
        retry_after: Duration,
    },
}

/// Proof a call was admitted; report it to [`Breaker::on_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the outcome of an admitted call"]
pub struct Permit {
    probe: bool,
    generation: u64,
}

/// A circuit breaker for one endpoint.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    outcomes: VecDeque<(Instant, bool)>,
    consecutive_failures: u32,
    /// Bumped on every state change, so late reports of an old period are ignored.
    generation: u64,
    last_interval: Duration,
    nominal: Duration,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: State::Closed,
            outcomes: VecDeque::new(),
            consecutive_failures: 0,
            generation: 0,
            last_interval: Duration::ZERO,
            nominal: Duration::ZERO,
        }
    }

    /// The current state (as of the last call; `Open` past its deadline
    /// turns half-open on the next [`Breaker::try_acquire`]).
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Failures in a row since the last success (what the consecutive-failure
    /// trip counts).
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.outcomes.front() {
            if now.saturating_duration_since(at) < self.cfg.window {
                break;
            }
            self.outcomes.pop_front();
        }
    }

    /// Asks to make a call at `now`; also returns the transition when the
    /// open interval has passed and this call moved the breaker to half-open.
    pub fn try_acquire(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        let before = self.state;
        let mut transition = None;
        if let State::Open { until, .. } = self.state {
            if now < until {
                return (
                    Admit::No {
                        retry_after: until - now,
                    },
                    None,
                );
            }
            self.state = State::HalfOpen {
                in_flight: 0,
                successes: 0,
            };
            self.generation += 1;
            transition = Some(Transition::Probing);
        }
        let admit = match &mut self.state {
            State::Closed => Admit::Yes(Permit {
                probe: false,
                generation: self.generation,
            }),
            State::HalfOpen { in_flight, .. } if *in_flight < self.cfg.half_open_probes => {
                *in_flight += 1;
                Admit::Yes(Permit {
                    probe: true,
                    generation: self.generation,
                })
            }
            State::HalfOpen { .. } | State::Open { .. } => Admit::No {
                retry_after: Duration::ZERO,
            },
        };
        debug_assert!(
            !matches!((before, admit), (State::Open { until, .. }, Admit::Yes(_)) if now < until),
            "breaker invariant: an open breaker admits nothing before its interval ends"
        );
        self.check_invariants();
        (admit, transition)
    }

    /// Reports the outcome of an admitted call. `jitter_u` is a uniform
    /// random number in `[0, 1)` used if the breaker (re)opens.
    pub fn on_result(
        &mut self,
        permit: Permit,
        success: bool,
        now: Instant,
        jitter_u: f64,
    ) -> Option<Transition> {
        let transition = self.apply_result(permit, success, now, jitter_u);
        self.check_invariants();
        transition
    }

    fn apply_result(
        &mut self,
        permit: Permit,
        success: bool,
        now: Instant,
        jitter_u: f64,
    ) -> Option<Transition> {
        if permit.generation != self.generation {
            // Reported after the breaker moved on (e.g. a slow call from
            // before it tripped): it still counts in the window, nothing more.
            if !permit.probe {
                self.record(now, success);
            }
            return None;
        }
        match self.state {
            State::Closed => {
                self.record(now, success);
                if success {
                    self.consecutive_failures = 0;
                    return None;
                }
                self.consecutive_failures += 1;
                let window_calls = u32::try_from(self.outcomes.len()).unwrap_or(u32::MAX);
                if window_calls < self.cfg.min_calls {
                    return None;
                }
                debug_assert!(
                    window_calls >= self.cfg.min_calls,
                    "breaker invariant: it never trips with fewer calls than min_calls in the window"
                );
                let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count();
                let rate = failures as f64 / f64::from(window_calls);
                if self.consecutive_failures >= self.cfg.consecutive_failures
                    || rate >= self.cfg.failure_rate
                {
                    self.nominal = self.cfg.open_base.min(self.cfg.open_max);
                    self.last_interval = Duration::ZERO;
                    let interval = self.open(now, jitter_u);
                    return Some(Transition::Tripped {
                        window_calls,
                        interval,
                    });
                }
                None
            }
            State::HalfOpen {
                ref mut in_flight,
                ref mut successes,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                if success {
                    *successes += 1;
                    if *successes >= self.cfg.half_open_probes {
                        self.state = State::Closed;
                        self.generation += 1;
                        self.outcomes.clear();
                        self.consecutive_failures = 0;
                        return Some(Transition::Closed);
                    }
                    return None;
                }
                if crate::rt::faults::injected(crate::rt::faults::Bug::BreakerForgetsProbeFailures)
                {
                    return None;
                }
                let previous = self.nominal;
                self.nominal = self
                    .nominal
                    .mul_f64(self.cfg.open_multiplier.max(1.0))
                    .min(self.cfg.open_max);
                debug_assert!(
                    self.nominal >= previous,
                    "breaker invariant: the open interval never shrinks while failures continue \
                     (nominal {previous:?} -> {:?})",
                    self.nominal
                );
                let interval = self.open(now, jitter_u);
                Some(Transition::Reopened { interval })
            }
            State::Open { .. } => None,
        }
    }

    /// Whether `permit` is a probe of the current half-open period (its
    /// outcome decides whether the breaker closes or reopens).
    #[must_use]
    pub fn is_current_probe(&self, permit: &Permit) -> bool {
        permit.probe && permit.generation == self.generation
    }

    /// Returns a permit that was not used (the call never started).
    pub fn release(&mut self, permit: Permit) {
        if let State::HalfOpen { in_flight, .. } = &mut self.state
            && permit.probe
            && permit.generation == self.generation
        {
            *in_flight = in_flight.saturating_sub(1);
        }
        self.check_invariants();
    }

    fn record(&mut self, now: Instant, success: bool) {
        self.prune(now);
        self.outcomes.push_back((now, success));
    }

    /// Opens for the nominal interval plus jitter, never shorter than the
    /// previous open interval of this failure streak.
    fn open(&mut self, now: Instant, jitter_u: f64) -> Duration {
        let jittered = self
            .nominal
            .mul_f64(1.0 + self.cfg.jitter.max(0.0) * jitter_u.clamp(0.0, 1.0));
        let interval = jittered.max(self.last_interval);
        debug_assert!(
            interval >= self.last_interval,
            "breaker invariant: the open interval never shrinks while failures continue \
             ({:?} -> {interval:?})",
            self.last_interval
        );
        self.last_interval = interval;
        self.state = State::Open {
            until: now + interval,
            interval,
        };
        self.generation += 1;
        interval
    }

    /// Asserts what holds between any two calls (debug builds: the proptest
    /// and every simulated run check it on each step).
    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let cfg = &self.cfg;
        match self.state {
            State::Closed => {}
            State::Open { interval, .. } => {
                assert_eq!(
                    interval, self.last_interval,
                    "breaker invariant: an open period lasts the interval it was given"
                );
                assert!(
                    interval >= cfg.open_base.min(cfg.open_max)
                        && interval <= cfg.open_max.mul_f64(1.0 + cfg.jitter.max(0.0)),
                    "breaker invariant: the open interval stays within open_base..=open_max \
                     plus jitter ({interval:?})"
                );
            }
            State::HalfOpen {
                in_flight,
                successes,
            } => {
                assert!(
                    in_flight <= cfg.half_open_probes,
                    "breaker invariant: half-open admits at most the probe count \
                     ({in_flight} > {})",
                    cfg.half_open_probes
                );
                assert!(
                    successes < cfg.half_open_probes,
                    "breaker invariant: half-open closes once its probes succeeded"
                );
            }
        }
        if let (Some((oldest, _)), Some((newest, _))) =
            (self.outcomes.front(), self.outcomes.back())
        {
            assert!(
                newest.saturating_duration_since(*oldest) < cfg.window,
                "breaker invariant: the counted outcomes span less than the window"
            );
        }
    }
}

#[cfg(test)]
mod tests;
