//! The alert state machine, sans I/O: per service, a sequence of health
//! observations (each with `now`) becomes Triggered / Escalated / Resolved
//! transitions, damped so that one bad probe never pages anyone, a flapping
//! service fires (even one that is never bad twice in a row) and stays
//! firing until it is stable again.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::health::{Health, Severity};

/// How observations are damped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damping {
    /// Consecutive unhealthy probes before an alert fires (N, at least 1);
    /// a flapping service fires on its next unhealthy probe regardless.
    pub trigger_after: u32,
    /// Consecutive healthy probes before a firing alert resolves (M, at least 1).
    pub resolve_after: u32,
    /// A service whose health flipped more than this many times within
    /// `flap_window` is flapping: its alert does not resolve (K).
    pub flap_limit: u32,
    /// The window flips are counted in.
    pub flap_window: Duration,
}

impl Default for Damping {
    fn default() -> Self {
        Self {
            trigger_after: 2,
            resolve_after: 3,
            flap_limit: 4,
            flap_window: Duration::from_secs(60),
        }
    }
}

/// A transition of one service's alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The service has been unhealthy long enough: an alert fires.
    Triggered(Severity),
    /// The firing alert got worse (severities never shrink while firing).
    Escalated(Severity),
    /// The service has been healthy and stable long enough.
    Resolved,
}

/// What the machine remembers of one service.
#[derive(Debug, Clone, Default)]
struct Track {
    firing: Option<Severity>,
    unhealthy_run: u32,
    healthy_run: u32,
    last_healthy: Option<bool>,
    /// Times of the latest flips, at most `flap_limit + 1`, oldest first.
    flips: VecDeque<u64>,
}

/// The alert state of every observed service.
#[derive(Debug, Clone, Default)]
pub struct Damper {
    cfg: Damping,
    tracks: BTreeMap<String, Track>,
}

impl Damper {
    /// A machine with `cfg` (zero thresholds count as 1).
    #[must_use]
    pub fn new(cfg: Damping) -> Self {
        Self {
            cfg: Damping {
                trigger_after: cfg.trigger_after.max(1),
                resolve_after: cfg.resolve_after.max(1),
                ..cfg
            },
            tracks: BTreeMap::new(),
        }
    }

    /// Feeds one probe's verdict on `service` at `now_ms` (a monotonic
    /// clock in milliseconds); returns the alert's transition, if any.
    pub fn observe(&mut self, service: &str, health: Health, now_ms: u64) -> Option<Change> {
        let cfg = self.cfg;
        let track = self.tracks.entry(service.to_owned()).or_default();
        let healthy = health.is_healthy();
        if track.last_healthy.is_some_and(|last| last != healthy) {
            track.flips.push_back(now_ms);
            while track.flips.len() > cfg.flap_limit as usize + 1 {
                track.flips.pop_front();
            }
        }
        track.last_healthy = Some(healthy);
        if healthy {
            track.healthy_run = track.healthy_run.saturating_add(1);
            track.unhealthy_run = 0;
        } else {
            track.unhealthy_run = track.unhealthy_run.saturating_add(1);
            track.healthy_run = 0;
        }
        let flapping = flapping(&cfg, track, now_ms);
        match (track.firing, health.severity()) {
            (None, Some(severity)) if track.unhealthy_run >= cfg.trigger_after || flapping => {
                track.firing = Some(severity);
                Some(Change::Triggered(severity))
            }
            (Some(firing), Some(severity)) if severity > firing => {
                track.firing = Some(severity);
                Some(Change::Escalated(severity))
            }
            (Some(_), None) if track.healthy_run >= cfg.resolve_after && !flapping => {
                track.firing = None;
                Some(Change::Resolved)
            }
            _ => None,
        }
    }

    /// The severity of `service`'s firing alert, if one fires.
    #[must_use]
    pub fn firing(&self, service: &str) -> Option<Severity> {
        self.tracks.get(service).and_then(|t| t.firing)
    }

    /// Whether `service` flipped more than the limit within the window
    /// ending at `now_ms`.
    #[must_use]
    pub fn is_flapping(&self, service: &str, now_ms: u64) -> bool {
        self.tracks
            .get(service)
            .is_some_and(|t| flapping(&self.cfg, t, now_ms))
    }
}

fn flapping(cfg: &Damping, track: &Track, now_ms: u64) -> bool {
    let window = u64::try_from(cfg.flap_window.as_millis()).unwrap_or(u64::MAX);
    track.flips.len() > cfg.flap_limit as usize
        && track
            .flips
            .front()
            .is_some_and(|&oldest| now_ms.saturating_sub(oldest) < window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UP: Health = Health::Serving;
    const DOWN: Health = Health::NotServing;

    fn health() -> impl Strategy<Value = Health> {
        prop_oneof![
            3 => Just(Health::Serving),
            1 => Just(Health::Degraded),
            2 => Just(Health::NotServing),
        ]
    }

    /// Per service, each observation and the change it caused.
    /// Per service: each observation, the change it made, and its time.
    type Log = Vec<Vec<(Health, Option<Change>, u64)>>;

    /// Runs `steps` (service index, health, ms since the previous step);
    /// returns per service its observations and the changes at each.
    fn run(cfg: Damping, steps: &[(usize, Health, u64)]) -> (Damper, u64, Log) {
        let mut damper = Damper::new(cfg);
        let mut now = 0;
        let mut log = vec![Vec::new(); 3];
        for &(service, health, dt) in steps {
            now += dt;
            let change = damper.observe(&format!("svc{service}"), health, now);
            log[service].push((health, change, now));
        }
        (damper, now, log)
    }

    #[test]
    fn one_bad_probe_never_fires_two_do() {
        let mut d = Damper::new(Damping::default());
        assert_eq!(d.observe("a", UP, 0), None);
        assert_eq!(d.observe("a", DOWN, 2_000), None, "one bad probe");
        assert_eq!(d.observe("a", UP, 4_000), None);
        assert_eq!(d.observe("a", DOWN, 6_000), None);
        assert_eq!(
            d.observe("a", DOWN, 8_000),
            Some(Change::Triggered(Severity::Critical))
        );
        assert_eq!(d.observe("a", UP, 10_000), None);
        assert_eq!(d.observe("a", UP, 12_000), None);
        assert_eq!(d.observe("a", UP, 14_000), Some(Change::Resolved));
    }

    #[test]
    fn degraded_fires_a_warning_that_escalates() {
        let mut d = Damper::new(Damping::default());
        d.observe("a", Health::Degraded, 0);
        assert_eq!(
            d.observe("a", Health::Degraded, 1),
            Some(Change::Triggered(Severity::Warning))
        );
        assert_eq!(
            d.observe("a", DOWN, 2),
            Some(Change::Escalated(Severity::Critical))
        );
        assert_eq!(d.observe("a", Health::Degraded, 3), None, "never shrinks");
        assert_eq!(d.firing("a"), Some(Severity::Critical));
    }

    #[test]
    fn a_service_bad_every_other_probe_fires_once_it_flaps() {
        let cfg = Damping::default();
        let mut d = Damper::new(cfg);
        let mut fired_at = None;
        for i in 0..20u64 {
            let h = if i % 2 == 0 { UP } else { DOWN };
            if let Some(Change::Triggered(_)) = d.observe("a", h, i * 2_000) {
                fired_at = Some(i);
                break;
            }
        }
        // Flips at probes 1, 2, 3, ...: the first unhealthy probe after more
        // than K flips fires.
        let first = u64::from(cfg.flap_limit) + 1;
        let expected = if first % 2 == 1 { first } else { first + 1 };
        assert_eq!(fired_at, Some(expected));
        assert_eq!(d.firing("a"), Some(Severity::Critical));
    }

    #[test]
    fn a_flapping_service_stays_firing_until_stable() {
        let cfg = Damping::default();
        let mut d = Damper::new(cfg);
        let mut now = 0;
        let mut step = |d: &mut Damper, h| {
            now += 2_000;
            (now, d.observe("a", h, now))
        };
        step(&mut d, DOWN);
        assert!(matches!(step(&mut d, DOWN).1, Some(Change::Triggered(_))));
        // Flip back and forth faster than M healthy probes: more than K flips.
        for _ in 0..=cfg.flap_limit / 2 {
            assert_eq!(step(&mut d, UP).1, None);
            assert_eq!(step(&mut d, DOWN).1, None);
        }
        // Up for good: M healthy probes are not enough while flapping.
        for _ in 0..cfg.resolve_after {
            let (t, change) = step(&mut d, UP);
            assert_eq!(change, None, "flapping: still firing");
            assert!(d.is_flapping("a", t));
        }
        let resolved_at = (0..100)
            .map(|_| step(&mut d, UP))
            .find(|(_, change)| *change == Some(Change::Resolved))
            .map(|(t, _)| t)
            .expect("resolves once stable");
        assert!(!d.is_flapping("a", resolved_at));
        assert!(
            d.is_flapping("a", resolved_at - 2_000),
            "resolves at the first stable probe"
        );
    }

    proptest! {
        #[test]
        fn fires_only_after_n_bad_probes_and_resolves_only_after_m_good(
            steps in prop::collection::vec((0usize..3, health(), 0u64..5_000), 0..300),
            n in 1u32..4, m in 1u32..5, k in 0u32..6,
        ) {
            let cfg = Damping { trigger_after: n, resolve_after: m, flap_limit: k, ..Damping::default() };
            let (_, _, log) = run(cfg, &steps);
            for history in &log {
                for (i, (health, change, at)) in history.iter().enumerate() {
                    let last = |len: u32| {
                        let len = len as usize;
                        (i + 1 >= len).then(|| &history[i + 1 - len..=i])
                    };
                    match change {
                        Some(Change::Triggered(_)) => {
                            let bad_run = last(n).is_some_and(|run| run.iter().all(|(h, _, _)| !h.is_healthy()));
                            // Flapping: more than K flips within the window up to now.
                            let window = u64::try_from(cfg.flap_window.as_millis()).unwrap();
                            let flips = (1..=i)
                                .filter(|&j| history[j].0.is_healthy() != history[j - 1].0.is_healthy())
                                .filter(|&j| at - history[j].2 < window)
                                .count();
                            prop_assert!(!health.is_healthy(), "fired on a healthy probe");
                            prop_assert!(bad_run || flips > k as usize, "fired without N bad probes or flapping");
                        }
                        Some(Change::Resolved) => {
                            let run = last(m).expect("at least M probes seen");
                            prop_assert!(run.iter().all(|(h, _, _)| h.is_healthy()), "resolved without M good probes");
                        }
                        _ => {}
                    }
                }
            }
        }

        #[test]
        fn triggered_and_resolved_strictly_alternate(
            steps in prop::collection::vec((0usize..3, health(), 0u64..5_000), 0..300),
            n in 1u32..4, m in 1u32..5, k in 0u32..6,
        ) {
            let cfg = Damping { trigger_after: n, resolve_after: m, flap_limit: k, ..Damping::default() };
            let (damper, _, log) = run(cfg, &steps);
            for (service, history) in log.iter().enumerate() {
                let mut firing = false;
                for (_, change, _) in history {
                    match change {
                        Some(Change::Triggered(_)) => { prop_assert!(!firing); firing = true; }
                        Some(Change::Escalated(_)) => prop_assert!(firing),
                        Some(Change::Resolved) => { prop_assert!(firing); firing = false; }
                        None => {}
                    }
                }
                prop_assert_eq!(damper.firing(&format!("svc{service}")).is_some(), firing);
            }
        }

        #[test]
        fn a_stable_healthy_service_stops_firing(
            steps in prop::collection::vec((0usize..3, health(), 0u64..5_000), 0..300),
            n in 1u32..4, m in 1u32..5, k in 0u32..6,
            interval in 500u64..5_000,
        ) {
            let cfg = Damping { trigger_after: n, resolve_after: m, flap_limit: k, ..Damping::default() };
            let (mut damper, mut now, _) = run(cfg, &steps);
            // Healthy from now on: once M probes and the flap window have
            // passed, nothing fires, and nothing fires again.
            let window = u64::try_from(cfg.flap_window.as_millis()).unwrap();
            let settle = u64::from(m) + window / interval + 1;
            for i in 0..settle + 20 {
                now += interval;
                for s in 0..3 {
                    let change = damper.observe(&format!("svc{s}"), UP, now);
                    prop_assert!(!matches!(change, Some(Change::Triggered(_) | Change::Escalated(_))));
                    if i >= settle {
                        prop_assert_eq!(damper.firing(&format!("svc{s}")), None);
                    }
                }
            }
        }
    }
}
