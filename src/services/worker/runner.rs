//! The runner loop: leases due jobs, runs at most `concurrency` at once in
//! this one task (stopping it stops them all), records each attempt's end.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use super::jobs::{Jobs, Stop};
use super::queue::Job;
use super::transcode;
use crate::client::ClientPool;
use crate::rt;
use crate::services::media;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs jobs until the task is stopped.
pub async fn run(jobs: Arc<Jobs>, pool: ClientPool) {
    let mut running = FuturesUnordered::new();
    let lease = millis(jobs.config.lease);
    loop {
        while running.len() < jobs.config.concurrency.max(1) {
            match jobs.store.lease_next(rt::unix_ms(), lease).await {
                Ok((next, expired)) => {
                    jobs.lost(expired).await;
                    let Some(job) = next else { break };
                    tracing::info!(job_id = %job.id, attempt = job.attempts, "job leased");
                    running.push(attempt(jobs.clone(), pool.clone(), job));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lease jobs");
                    break;
                }
            }
        }
        tokio::select! {
            // Fixed polling order: tokio's random one would differ between
            // runs of one seed in the simulator.
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            () = jobs.woken(jobs.config.idle_poll) => {}
        }
    }
}

/// Runs one attempt of `job` and records how it ended.
async fn attempt(jobs: Arc<Jobs>, pool: ClientPool, job: Job) {
    let attempt = job.attempts;
    let run = async {
        match job.kind.as_str() {
            media::TRANSCODE_JOB => transcode::run(&jobs, &pool, &job).await,
            other => Err(Stop::permanent(
                "unknown job kind",
                format!("unknown job kind {other:?}"),
            )),
        }
    };
    // In the submitter's trace, as a span of its own per attempt.
    let result = match rt::trace::TraceContext::parse(job.trace.as_bytes()) {
        Some(submitter) => {
            let context =
                crate::telemetry::derived_context(submitter, &format!("{}#{attempt}", job.id));
            let mut span = crate::telemetry::Span::start(
                crate::telemetry::Kind::Internal,
                || format!("job {}", job.kind),
                context,
                Some(submitter.span_id),
                false,
            );
            if let Some(span) = &mut span {
                span.set("streamgate.job.id", job.id.clone());
                span.set("streamgate.job.attempt", i64::from(attempt));
            }
            let result = rt::trace::in_context(context, run).await;
            if let Some(mut span) = span {
                if let Err(Stop::Failed { reason, .. }) = &result {
                    span.fail(reason.clone());
                }
                span.end();
            }
            result
        }
        None => run.await,
    };
    match result {
        // buggify (simulation only): the ack is lost; the lease runs out
        // and the job runs again, which must be harmless.
        Ok(()) if rt::faults::buggify(rt::faults::Point::AckDropped, 0.05) => {
            tracing::warn!(job_id = %job.id, attempt, "buggify: ack dropped");
        }
        Ok(()) => jobs.succeeded(&job, attempt).await,
        Err(Stop::Failed {
            reason,
            detail,
            permanent,
        }) => {
            tracing::warn!(job_id = %job.id, attempt, %reason, %detail, "attempt failed");
            jobs.failed(&job, attempt, &reason, permanent).await;
        }
        Err(Stop::Abandoned) => {
            tracing::info!(job_id = %job.id, attempt, "attempt abandoned (job cancelled or lease lost)");
        }
    }
}
