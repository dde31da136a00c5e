use super::*;
use proptest::prelude::*;

fn t0() -> Instant {
    crate::rt::now()
}

#[test]
fn five_failures_in_a_row_trip_it_for_thirty_seconds() {
    let now = t0();
    let mut b = Breaker::new(BreakerConfig::new(5, Duration::from_secs(30)));
    for i in 0..5 {
        let (Admit::Yes(p), _) = b.try_acquire(now) else {
            panic!("closed admits")
        };
        let t = b.on_result(p, false, now, 0.5);
        assert_eq!(t.is_some(), i == 4, "trips on the fifth failure");
    }
    let State::Open { interval, .. } = b.state() else {
        panic!("open")
    };
    assert!(
        interval >= Duration::from_secs(30) && interval <= Duration::from_secs(33),
        "{interval:?}"
    );
    assert!(matches!(
        b.try_acquire(now + Duration::from_secs(29)).0,
        Admit::No { .. }
    ));
    let (admit, t) = b.try_acquire(now + interval);
    assert_eq!(t, Some(Transition::Probing));
    let Admit::Yes(probe) = admit else {
        panic!("probe admitted")
    };
    assert!(
        matches!(b.try_acquire(now + interval).0, Admit::No { .. }),
        "one probe at a time"
    );
    assert_eq!(
        b.on_result(probe, true, now + interval, 0.0),
        Some(Transition::Closed)
    );
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn successes_reset_the_consecutive_count() {
    let now = t0();
    let mut b = Breaker::new(BreakerConfig::new(3, Duration::from_secs(1)));
    let mut streak = 0;
    for ok in [false, false, true, false, false, true] {
        let (Admit::Yes(p), _) = b.try_acquire(now) else {
            panic!()
        };
        assert_eq!(b.on_result(p, ok, now, 0.0), None);
        streak = if ok { 0 } else { streak + 1 };
        assert_eq!(
            b.consecutive_failures(),
            streak,
            "as the monitor reports it"
        );
    }
    assert_eq!(b.state(), State::Closed);
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Acquire,
    Report(usize, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3_000).prop_map(Op::Advance),
        Just(Op::Acquire),
        Just(Op::Acquire),
        (0usize..8, prop::bool::weighted(0.6)).prop_map(|(i, fail)| Op::Report(i, !fail)),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        1u32..6,
        0.2f64..1.1,
        1u64..20,
        1u32..10,
        100u64..5_000,
        1u32..4,
    )
        .prop_map(
            |(consecutive, rate, window_s, min_calls, base_ms, probes)| BreakerConfig {
                consecutive_failures: consecutive,
                failure_rate: rate,
                window: Duration::from_secs(window_s),
                min_calls,
                open_base: Duration::from_millis(base_ms),
                open_max: Duration::from_millis(base_ms * 8),
                open_multiplier: 2.0,
                jitter: 0.2,
                half_open_probes: probes,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every breaker invariant of ARCHITECTURE.md ("Invariants the
    /// simulator checks"), checked after each step
    /// against what the breaker reported.
    #[test]
    fn invariants_hold_on_every_step(cfg in config(), ops in prop::collection::vec(op(), 1..300), seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut b = Breaker::new(cfg);
        let mut now = t0();
        let mut outstanding: Vec<Permit> = Vec::new();
        let mut probes_this_period = 0u32;
        let mut streak_interval: Option<Duration> = None;
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Acquire => {
                    let before = b.state();
                    let (admit, t) = b.try_acquire(now);
                    if let State::Open { until, .. } = before && now < until {
                        prop_assert!(matches!(admit, Admit::No { .. }), "open admits nothing before its interval ends");
                        prop_assert_eq!(t, None);
                    }
                    if t == Some(Transition::Probing) {
                        probes_this_period += 1;
                        prop_assert_eq!(probes_this_period, 1, "open to half-open once per open period");
                    }
                    if let Admit::Yes(p) = admit {
                        outstanding.push(p);
                    }
                }
                Op::Report(i, ok) => {
                    if outstanding.is_empty() { continue; }
                    let p = outstanding.remove(i % outstanding.len());
                    match b.on_result(p, ok, now, rng.gen_range(0.0..1.0)) {
                        Some(Transition::Tripped { window_calls, interval }) => {
                            prop_assert!(window_calls >= cfg.min_calls, "never trips below min calls");
                            prop_assert!(interval >= cfg.open_base.min(cfg.open_max));
                            streak_interval = Some(interval);
                            probes_this_period = 0;
                        }
                        Some(Transition::Reopened { interval }) => {
                            let prev = streak_interval.expect("reopen follows a trip");
                            prop_assert!(interval >= prev, "open interval never shrinks while failures continue");
                            prop_assert!(interval <= cfg.open_max.mul_f64(1.0 + cfg.jitter) , "capped");
                            streak_interval = Some(interval);
                            probes_this_period = 0;
                        }
                        Some(Transition::Closed) => {
                            streak_interval = None;
                            probes_this_period = 0;
                        }
                        Some(Transition::Probing) | None => {}
                    }
                }
            }
            if let State::HalfOpen { in_flight, .. } = b.state() {
                prop_assert!(in_flight <= cfg.half_open_probes, "half-open admits at most the probe limit");
                let probes = outstanding.iter().filter(|p| p.probe && p.generation == b.generation).count();
                prop_assert!(probes as u32 <= cfg.half_open_probes);
            }
        }
    }
}
