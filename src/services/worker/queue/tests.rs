//! The job state machine under random operation sequences: attempts never
//! exceed the maximum, terminal states are final, refusals change nothing.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Lease(u64),
    /// Token = attempts minus the offset (0 = the current lease).
    Renew(u32, u32),
    Succeed(u32),
    Fail(u32, bool, u64),
    Expire,
    Recover,
    Cancel,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..5_000).prop_map(Op::Lease),
        2 => (0u32..2, 0u32..150).prop_map(|(d, p)| Op::Renew(d, p)),
        1 => (0u32..2).prop_map(Op::Succeed),
        3 => (0u32..2, proptest::bool::weighted(0.1), 0u64..5_000)
            .prop_map(|(d, perm, ms)| Op::Fail(d, perm, ms)),
        1 => Just(Op::Expire),
        1 => Just(Op::Recover),
        1 => Just(Op::Cancel),
        2 => (0u64..10_000).prop_map(Op::Advance),
    ]
}

proptest! {
    #[test]
    fn transitions_keep_the_invariants(
        max in 1u32..6,
        delay in 0u64..3_000,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut now = 1_000u64;
        let mut job = Job::new("j".into(), "transcode".into(), "{}".into(), max, String::new(), now, delay);
        let mut leases = 0u32;
        for op in ops {
            let before = job.clone();
            let current = job.attempts;
            let token = |d: u32| current.saturating_sub(d);
            let outcome: Result<(), Refused> = match op {
                Op::Lease(ms) => {
                    let eligible = job.is_eligible(now);
                    let r = job.lease(now, ms);
                    prop_assert_eq!(r.is_ok(), eligible);
                    if let Ok(attempt) = r {
                        leases += 1;
                        prop_assert_eq!(attempt, before.attempts + 1);
                        prop_assert_eq!(job.state, JobState::Leased);
                    }
                    r.map(drop)
                }
                Op::Renew(d, p) => job.renew(token(d), now, 1_000, p),
                Op::Succeed(d) => {
                    let r = job.succeed(token(d), now);
                    if r.is_ok() {
                        prop_assert_eq!(before.state, JobState::Leased);
                        prop_assert_eq!(job.progress, 100);
                    }
                    r
                }
                Op::Fail(d, permanent, retry) => {
                    let r = job.fail(token(d), now, "boom", retry, permanent);
                    if let Ok(dead) = r {
                        prop_assert_eq!(dead, permanent || job.attempts == job.max_attempts);
                        prop_assert_eq!(job.state, if dead { JobState::DeadLetter } else { JobState::Failed });
                        prop_assert!(dead || job.not_before_ms == now + retry);
                    }
                    r.map(drop)
                }
                Op::Expire => {
                    let changed = job.expire(now);
                    prop_assert_eq!(changed, before.lease_expired(now));
                    Ok(())
                }
                Op::Recover => {
                    let changed = job.recover(now);
                    prop_assert_eq!(changed, before.state == JobState::Leased);
                    Ok(())
                }
                Op::Cancel => job.cancel(now, "stop"),
                Op::Advance(ms) => {
                    now += ms;
                    Ok(())
                }
            };
            if outcome.is_err() || before.state.is_terminal() {
                prop_assert_eq!(&job, &before, "refusals and terminal states change nothing");
            }
            prop_assert!(job.attempts <= job.max_attempts);
            prop_assert_eq!(job.attempts, leases, "an attempt is counted once per lease");
            prop_assert!(job.progress <= 100);
            prop_assert!(job.last_error.len() <= MAX_ERROR_BYTES);
            match job.state {
                JobState::Leased => prop_assert!(job.attempts >= 1),
                JobState::Failed | JobState::Queued => {
                    prop_assert!(job.attempts < job.max_attempts, "a retryable job has attempts left");
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_lost_lease_is_retried_until_the_attempts_run_out() {
    let mut job = Job::new("j".into(), "k".into(), "{}".into(), 2, String::new(), 0, 0);
    assert_eq!(job.lease(0, 100), Ok(1));
    assert!(!job.expire(99));
    assert!(job.expire(100));
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.lease(100, 100), Ok(2));
    assert_eq!(job.renew(1, 150, 100, 10), Err(Refused::StaleLease));
    assert!(job.recover(150));
    assert_eq!(job.state, JobState::DeadLetter);
    assert!(job.last_error.contains("restarted"));
    assert_eq!(
        job.cancel(200, ""),
        Err(Refused::Terminal(JobState::DeadLetter))
    );
}

#[test]
fn a_delayed_job_waits_and_cancel_keeps_the_reason() {
    let mut job = Job::new(
        "j".into(),
        "k".into(),
        "{}".into(),
        0,
        String::new(),
        10,
        50,
    );
    assert_eq!(job.max_attempts, 1, "at least one attempt");
    assert_eq!(job.lease(59, 10), Err(Refused::NotEligible));
    assert_eq!(job.lease(60, 10), Ok(1));
    job.cancel(61, "user asked").unwrap();
    assert_eq!(job.last_error, "cancelled: user asked");
    assert_eq!(
        job.succeed(1, 62),
        Err(Refused::Terminal(JobState::Cancelled))
    );
    for s in JobState::ALL {
        assert_eq!(JobState::parse(s.as_str()), Some(s));
    }
    assert_eq!(truncate("héllo", 2), "h");
}
