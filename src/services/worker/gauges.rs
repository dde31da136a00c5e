//! The job queue's gauges: how many jobs are queued, leased and failed
//! (waiting for a retry), and how
//! long the queued job that has been runnable longest has waited
//! (`streamgate_job_queue_depth{state}`,
//! `streamgate_job_queue_oldest_age_seconds`). Counted from the store every
//! [`INTERVAL`] (the store is shared by every worker instance, so each
//! reports the same queue), at most [`MAX_COUNTED`] jobs per state.

use std::time::Duration;

use super::error::WorkerError;
use super::queue::{Job, JobState};
use super::store::{Filter, Store};
use crate::middleware::metrics::Metrics;
use crate::rt;

/// Between two counts. A count reads the whole job table on JetStream
/// (its `list` scans the bucket), so not too often; the alert rules look at
/// 10-minute windows.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// Most jobs of one state counted (the newest first, so a queue past this
/// reports this many and the wait of the oldest job counted).
pub const MAX_COUNTED: u64 = 100_000;

/// Jobs read per store query.
const PAGE: u32 = 1_000;

/// One count of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Jobs queued (waiting for a runner, or for their retry's delay).
    pub queued: u64,
    /// Jobs leased (running).
    pub leased: u64,
    /// Jobs whose last attempt failed, waiting for their retry.
    pub failed: u64,
    /// How long the queued job runnable longest has been runnable, in ms
    /// (a job waiting for its retry delay is not runnable yet): 0 when none.
    pub oldest_wait_ms: u64,
}

/// How long `job`, queued, has been runnable at `now_ms`.
fn waited_ms(job: &Job, now_ms: u64) -> u64 {
    now_ms.saturating_sub(job.not_before_ms.max(job.created_ms))
}

/// Counts the queue at `now_ms`.
///
/// # Errors
/// Store failures.
pub async fn sample(store: &Store, now_ms: u64) -> Result<Sample, WorkerError> {
    let mut out = Sample::default();
    for state in [JobState::Queued, JobState::Leased, JobState::Failed] {
        let mut counted = 0u64;
        let mut before_seq = None;
        loop {
            let filter = Filter {
                state: Some(state),
                kind: None,
                before_seq,
            };
            let (page, next) = store.list(filter, PAGE).await?;
            for job in page.iter().filter(|j| j.state == state) {
                counted += 1;
                if state == JobState::Queued {
                    out.oldest_wait_ms = out.oldest_wait_ms.max(waited_ms(job, now_ms));
                }
            }
            match next {
                Some(seq) if counted < MAX_COUNTED => before_seq = Some(seq),
                _ => break,
            }
        }
        match state {
            JobState::Queued => out.queued = counted,
            JobState::Leased => out.leased = counted,
            _ => out.failed = counted,
        }
    }
    Ok(out)
}

/// Counts the queue into `metrics` every [`INTERVAL`] until aborted.
pub async fn run(store: Store, metrics: Metrics) {
    loop {
        match sample(&store, rt::unix_ms()).await {
            Ok(s) => metrics.job_queue(
                s.queued,
                s.leased,
                s.failed,
                Duration::from_millis(s.oldest_wait_ms),
            ),
            Err(e) => tracing::debug!(error = %e, "job queue not counted"),
        }
        rt::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, now_ms: u64, delay_ms: u64) -> Job {
        Job::new(
            id.to_owned(),
            "transcode".to_owned(),
            "{}".to_owned(),
            3,
            String::new(),
            now_ms,
            delay_ms,
        )
    }

    #[tokio::test]
    async fn counts_queued_and_leased_and_the_longest_runnable_wait() {
        let t0 = 1_000_000;
        let (store, _) = Store::open(None, t0).await.expect("store");
        assert_eq!(sample(&store, t0).await.expect("sample"), Sample::default());

        store.submit(job("a", t0, 0), 100).await.expect("a");
        store
            .submit(job("b", t0 + 10_000, 0), 100)
            .await
            .expect("b");
        // Runnable only at t0 + 100 s: waiting for its delay, not the queue.
        store
            .submit(job("c", t0 + 20_000, 80_000), 100)
            .await
            .expect("c");
        let s = sample(&store, t0 + 30_000).await.expect("sample");
        assert_eq!(
            s,
            Sample {
                queued: 3,
                leased: 0,
                failed: 0,
                oldest_wait_ms: 30_000
            }
        );

        // The oldest runnable job ("a") is leased: "b" is now the oldest.
        let (leased, _) = store.lease_next(t0 + 40_000, 60_000).await.expect("lease");
        assert_eq!(leased.expect("a job").id, "a");
        let s = sample(&store, t0 + 40_000).await.expect("sample");
        assert_eq!(
            s,
            Sample {
                queued: 2,
                leased: 1,
                failed: 0,
                oldest_wait_ms: 30_000
            }
        );
        // Its attempt fails: it waits for its retry, counted as failed.
        let (_, dead) = store
            .update("a", move |j| j.fail(1, t0 + 45_000, "boom", 60_000, false))
            .await
            .expect("fail");
        assert!(!dead);
        let s = sample(&store, t0 + 50_000).await.expect("sample");
        assert_eq!((s.queued, s.leased, s.failed), (2, 0, 1));
        // Past its delay, "c" counts from when it became runnable.
        let s = sample(&store, t0 + 200_000).await.expect("sample");
        assert_eq!(s.oldest_wait_ms, 190_000, "b waited since t0 + 10 s");

        let metrics = Metrics::default();
        metrics.job_queue(
            s.queued,
            s.leased,
            s.failed,
            Duration::from_millis(s.oldest_wait_ms),
        );
        let text = metrics.render();
        for line in [
            "streamgate_job_queue_depth{state=\"queued\"} 2\n",
            "streamgate_job_queue_depth{state=\"leased\"} 0\n",
            "streamgate_job_queue_depth{state=\"failed\"} 1\n",
            "streamgate_job_queue_oldest_age_seconds 190.0\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn pages_through_more_jobs_than_one_query_returns() {
        let t0 = 5_000_000;
        let (store, _) = Store::open(None, t0).await.expect("store");
        let n = u64::from(PAGE) * 2 + 7;
        for i in 0..n {
            store
                .submit(job(&format!("j{i}"), t0 + i, 0), n + 1)
                .await
                .expect("submit");
        }
        let s = sample(&store, t0 + n + 1_000).await.expect("sample");
        assert_eq!(s.queued, n);
        assert_eq!(
            s.oldest_wait_ms,
            n + 1_000,
            "the first job, on the last page"
        );
    }
}
