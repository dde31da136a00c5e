//! The worker's JetStream job queue against a real NATS server with
//! JetStream (`NATS_URL`, default `nats://127.0.0.1:4222`): an unreachable
//! server fails the tests. Two stores on one name stand for two workers on
//! different hosts.
//!
//! Each test uses its own bucket and stream, deleted at the end.
#![cfg(not(madsim))]

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use streamgate::nats_auth::NatsAuth;
use streamgate::rt;
use streamgate::services::worker::WorkerError;
use streamgate::services::worker::queue::{Job, JobState, Refused};
use streamgate::services::worker::store::Store;
use streamgate::services::worker::store::jetstream::{JetStreamStore, Options};
use streamgate_testkit::job_store_contract::{self as contract, job};
use streamgate_testkit::nats_url;

/// A queue of its own: its options, a raw JetStream handle, and a store.
struct Queue {
    opts: Options,
    js: jetstream::Context,
}

impl Queue {
    async fn new(max_active: u64, lease: Duration) -> Self {
        let opts = Options {
            url: nats_url(),
            name: format!("sgtest_jobs_{:012x}", rt::random_u64() >> 16),
            max_active,
            lease,
            auth: NatsAuth::default(),
        };
        let client = async_nats::connect(opts.url.as_str())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NATS with JetStream must be reachable at {} for these tests \
                     (start `nats-server -js` or set NATS_URL): {e}",
                    opts.url
                )
            });
        Self {
            opts,
            js: jetstream::new(client),
        }
    }

    /// A worker's store (its own connection).
    async fn store(&self) -> Store {
        Store::JetStream(JetStreamStore::connect(&self.opts).await.expect("connect"))
    }

    /// Messages in the work queue: one per unfinished job.
    async fn queued(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(format!("{}_queue", self.opts.name))
            .await
            .expect("work queue");
        stream.info().await.expect("stream info").state.messages
    }

    async fn teardown(self) {
        self.js
            .delete_stream(format!("{}_queue", self.opts.name))
            .await
            .expect("delete the work queue");
        self.js
            .delete_key_value(self.opts.name.as_str())
            .await
            .expect("delete the bucket");
    }
}

const LONG: u64 = 60_000;

/// Leases until `store` finds nothing due.
async fn lease_all(store: &Store) -> Vec<Job> {
    let mut got = Vec::new();
    while let (Some(job), _) = store.lease_next(rt::unix_ms(), LONG).await.unwrap() {
        got.push(job);
    }
    got
}

#[tokio::test]
async fn two_workers_share_the_jobs_and_each_runs_once() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (a, b) = (q.store().await, q.store().await);
    for i in 0..10 {
        let (stored, dup) = a.submit(job(&format!("j{i}"), 3, 0), 100).await.unwrap();
        assert!(!dup);
        assert_eq!(stored.state, JobState::Queued);
    }
    assert_eq!(q.queued().await, 10);

    // Alternate between the two workers: every job is leased exactly once.
    let mut holder: HashMap<String, &Store> = HashMap::new();
    loop {
        let (from_a, _) = a.lease_next(rt::unix_ms(), LONG).await.unwrap();
        let (from_b, _) = b.lease_next(rt::unix_ms(), LONG).await.unwrap();
        if from_a.is_none() && from_b.is_none() {
            break;
        }
        for (j, store) in [(from_a, &a), (from_b, &b)] {
            let Some(j) = j else { continue };
            assert_eq!((j.state, j.attempts), (JobState::Leased, 1));
            assert!(
                holder.insert(j.id.clone(), store).is_none(),
                "{} leased twice",
                j.id
            );
        }
    }
    assert_eq!(holder.len(), 10, "{:?}", holder.keys());
    let by_b = holder.values().filter(|s| std::ptr::eq(**s, &b)).count();
    assert!(by_b > 0, "the second worker got none");

    // Each worker records the end of the jobs it holds; the queue empties.
    for (id, store) in holder {
        let (done, ()) = store
            .update(&id, |j| j.succeed(1, rt::unix_ms()))
            .await
            .unwrap();
        assert_eq!(done.state, JobState::Succeeded);
    }
    assert_eq!(q.queued().await, 0);
    q.teardown().await;
}

#[tokio::test]
async fn meets_the_job_store_contract() {
    let q = Queue::new(contract::MAX_ACTIVE, Duration::from_secs(60)).await;
    contract::submissions_deduplicate_and_respect_the_limit(&q.store().await).await;
    q.teardown().await;
    let q = Queue::new(contract::MAX_ACTIVE, Duration::from_secs(60)).await;
    let store = q.store().await;
    contract::lists_page_newest_first_with_filters(&store).await;
    // Each list reads through a consumer of its own, removed once the list
    // is read (in the background: within moments, not the server's 30 s
    // inactivity threshold).
    let mut records =
        q.js.get_stream(format!("KV_{}", q.opts.name))
            .await
            .expect("the bucket's stream");
    let mut consumers = usize::MAX;
    for _ in 0..50 {
        consumers = records
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count;
        if consumers == 0 {
            break;
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(consumers, 0, "list consumers left behind");
    q.teardown().await;
}

#[tokio::test]
async fn a_failed_attempt_waits_its_backoff_then_dead_letters() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (a, b) = (q.store().await, q.store().await);
    a.submit(job("flaky", 2, 0), 100).await.unwrap();
    let leased = lease_all(&a).await;
    assert_eq!(leased.len(), 1);
    let (failed, dead) = a
        .update("flaky", |j| j.fail(1, rt::unix_ms(), "boom", 600, false))
        .await
        .unwrap();
    assert!(!dead);
    assert_eq!(
        (failed.state, failed.last_error.as_str()),
        (JobState::Failed, "boom")
    );

    // Not before its backoff, on either worker.
    assert!(lease_all(&b).await.is_empty());
    assert!(lease_all(&a).await.is_empty());
    rt::sleep(Duration::from_millis(1_100)).await;
    let retried = lease_all(&b).await;
    assert_eq!(retried.len(), 1, "retried after the backoff");
    assert_eq!(retried[0].attempts, 2);

    // The last attempt fails: dead letter, and the message is gone.
    let (dead_job, dead) = b
        .update("flaky", |j| {
            j.fail(2, rt::unix_ms(), "boom again", 600, false)
        })
        .await
        .unwrap();
    assert!(dead);
    assert_eq!(dead_job.state, JobState::DeadLetter);
    assert_eq!(q.queued().await, 0);
    q.teardown().await;
}

#[tokio::test]
async fn a_delayed_job_runs_after_its_delay() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let store = q.store().await;
    store.submit(job("later", 1, 700), 100).await.unwrap();
    assert!(lease_all(&store).await.is_empty(), "too early");
    rt::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(lease_all(&store).await.len(), 1);
    q.teardown().await;
}

#[tokio::test]
async fn a_dead_workers_job_comes_back_and_a_renewed_one_does_not() {
    let lease = Duration::from_secs(2);
    let lease_ms = 2_000;
    let q = Queue::new(100, lease).await;
    let survivor = q.store().await;
    survivor.submit(job("renewed", 3, 0), 100).await.unwrap();
    survivor.submit(job("orphan", 3, 0), 100).await.unwrap();

    let doomed = q.store().await;
    let (orphan, _) = doomed.lease_next(rt::unix_ms(), lease_ms).await.unwrap();
    let orphan = orphan.expect("a job for the doomed worker");
    let (renewed, _) = survivor.lease_next(rt::unix_ms(), lease_ms).await.unwrap();
    let renewed = renewed.expect("a job for the survivor");
    assert_ne!(orphan.id, renewed.id);
    // The doomed worker dies holding its job (nothing acknowledged).
    drop(doomed);

    // The survivor renews its lease well within it for two and a half leases;
    // meanwhile the orphan comes back to it, its lost attempt counted.
    let other = q.store().await;
    let mut recovered = None;
    let mut expired_seen = Vec::new();
    for _ in 0..20 {
        rt::sleep(Duration::from_millis(250)).await;
        survivor
            .update(&renewed.id, move |j| {
                j.renew(1, rt::unix_ms(), lease_ms, 50)
            })
            .await
            .expect("the renewed lease holds");
        let (got, expired) = other.lease_next(rt::unix_ms(), LONG).await.unwrap();
        expired_seen.extend(expired.into_iter().map(|j| j.id));
        if let Some(job) = got {
            assert!(recovered.is_none(), "leased twice: {job:?}");
            recovered = Some(job);
        }
    }
    let recovered = recovered.expect("the dead worker's job came back");
    assert_eq!(recovered.id, orphan.id);
    assert_eq!(recovered.attempts, 2, "the lost attempt counts");
    assert_eq!(expired_seen, std::slice::from_ref(&orphan.id));

    // The dead worker's attempt can no longer report.
    assert!(matches!(
        other
            .update(&orphan.id, |j| j.succeed(1, rt::unix_ms()))
            .await,
        Err(WorkerError::Refused(_, Refused::StaleLease))
    ));
    q.teardown().await;
}

#[tokio::test]
async fn cancelled_jobs_leave_the_queue() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (a, b) = (q.store().await, q.store().await);
    a.submit(job("waiting", 3, 0), 100).await.unwrap();
    // Cancelled before any worker took it: the next delivery drops it.
    b.update("waiting", |j| j.cancel(rt::unix_ms(), "no longer wanted"))
        .await
        .unwrap();
    assert!(lease_all(&a).await.is_empty());
    assert_eq!(q.queued().await, 0);

    // Cancelled while running on a: a's next renewal is refused and the
    // message goes.
    a.submit(job("running", 3, 0), 100).await.unwrap();
    assert_eq!(lease_all(&a).await.len(), 1);
    let (cancelled, ()) = b
        .update("running", |j| j.cancel(rt::unix_ms(), "stop"))
        .await
        .unwrap();
    assert_eq!(cancelled.last_error, "cancelled: stop");
    assert!(matches!(
        a.update("running", |j| j.renew(1, rt::unix_ms(), LONG, 10))
            .await,
        Err(WorkerError::Refused(
            _,
            Refused::Terminal(JobState::Cancelled)
        ))
    ));
    assert_eq!(q.queued().await, 0);
    q.teardown().await;
}

#[tokio::test]
async fn racing_writers_both_apply_their_change() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (a, b) = (q.store().await, q.store().await);
    a.submit(job("raced", 3, 0), 100).await.unwrap();
    lease_all(&a).await;
    // Progress from the runner and a cancel from another worker, at once:
    // whichever lands second sees the first (compare-and-set).
    let (renewal, cancel) = tokio::join!(
        a.update("raced", |j| j.renew(1, rt::unix_ms(), LONG, 40)),
        b.update("raced", |j| j.cancel(rt::unix_ms(), ""))
    );
    let end = a.get("raced").await.unwrap().unwrap();
    assert!(cancel.is_ok());
    assert_eq!(end.state, JobState::Cancelled);
    match renewal {
        // Renewed first: its progress survives the cancel.
        Ok(_) => assert_eq!(end.progress, 40),
        Err(e) => assert!(matches!(
            e,
            WorkerError::Refused(_, Refused::Terminal(JobState::Cancelled))
        )),
    }
    q.teardown().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let opts = Options {
        url: "nats://127.0.0.1:1".to_owned(),
        name: "sgtest_unreachable".to_owned(),
        max_active: 10,
        lease: Duration::from_secs(1),
        auth: NatsAuth::default(),
    };
    let err = JetStreamStore::connect(&opts).await.unwrap_err();
    assert!(
        matches!(&err, WorkerError::Unavailable { what, .. } if what.contains("127.0.0.1:1")),
        "{err}"
    );
}

#[tokio::test]
async fn a_stopping_worker_gives_its_jobs_back_at_once() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (stopping, other) = (q.store().await, q.store().await);
    stopping.submit(job("held", 3, 0), 100).await.unwrap();
    stopping.submit(job("last", 1, 0), 100).await.unwrap();
    assert_eq!(lease_all(&stopping).await.len(), 2);
    let Store::JetStream(js) = &stopping else {
        unreachable!()
    };
    let mut released = js.release(rt::unix_ms()).await;
    released.sort_by(|a, b| a.id.cmp(&b.id));
    let states: Vec<_> = released
        .iter()
        .map(|j| (j.id.as_str(), j.state, j.attempts))
        .collect();
    // The lost attempt counts: "last" had only one.
    assert_eq!(
        states,
        [
            ("held", JobState::Queued, 1),
            ("last", JobState::DeadLetter, 1)
        ]
    );
    // Another worker has "held" at once, not after the 60 s ack wait.
    let taken = lease_all(&other).await;
    assert_eq!(taken.len(), 1);
    assert_eq!((taken[0].id.as_str(), taken[0].attempts), ("held", 2));
    assert_eq!(
        q.queued().await,
        1,
        "the dead-lettered job's message is gone"
    );
    q.teardown().await;
}

#[tokio::test]
async fn a_failed_attempt_without_backoff_runs_again_at_once() {
    let q = Queue::new(100, Duration::from_secs(60)).await;
    let (a, b) = (q.store().await, q.store().await);
    a.submit(job("again", 3, 0), 100).await.unwrap();
    assert_eq!(lease_all(&a).await.len(), 1);
    a.update("again", |j| j.fail(1, rt::unix_ms(), "retry now", 0, false))
        .await
        .unwrap();
    // A zero delay must not leave the message waiting out the 60 s ack wait
    // (the NAK is not confirmed: give the server a moment).
    let until = rt::now() + Duration::from_secs(2);
    let mut retried = lease_all(&b).await;
    while retried.is_empty() && rt::now() < until {
        rt::sleep(Duration::from_millis(20)).await;
        retried = lease_all(&b).await;
    }
    assert_eq!(retried.len(), 1, "not retried within 2 s");
    assert_eq!(retried[0].attempts, 2);
    q.teardown().await;
}

/// The work queue under the store meets the contract the simulator's model
/// is held to (`streamgate_testkit::queue_contract`, also run in `sim/`).
#[tokio::test]
async fn the_real_work_queue_meets_the_queue_contract() {
    use streamgate::services::worker::store::jetstream::nats::NatsQueue;
    use streamgate_testkit::queue_contract as qc;
    let queue = Queue::new(qc::MAX_MESSAGES, qc::ACK_WAIT).await;
    let client = async_nats::connect(queue.opts.url.as_str())
        .await
        .expect("connect");
    let name = queue.opts.name.as_str();
    let js = jetstream::new(client.clone());
    let timeout = Duration::from_secs(5);
    let work = NatsQueue::bind(client, &js, name, qc::MAX_MESSAGES, qc::ACK_WAIT, timeout)
        .await
        .expect("bind the work queue");
    qc::run_all(qc::Queue { queue: &work, name }).await;
    queue
        .js
        .delete_stream(format!("{name}_queue"))
        .await
        .expect("delete the work queue");
}
