//! The worker's core, shared by the gRPC server, the event consumer and the
//! runner: validates and submits jobs, ends attempts, publishes Job* events.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::error::WorkerError;
use super::queue::{Job, JobState, Refused};
use super::store::Store;
use super::transcode;
use crate::bus::EventBus;
use crate::bus::events::{self, JobCompleted, JobFailed, JobSubmitted};
use crate::middleware::metrics::Metrics;
use crate::resilience::backoff::Backoff;
use crate::rt;
use crate::services::media;

/// Attempts when a submission says 0.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest submission delay (24 h).
pub const MAX_DELAY_MS: u64 = 86_400_000;
/// Payload size bounds, bytes.
pub const PAYLOAD_BYTES: std::ops::RangeInclusive<usize> = 2..=65_536;
/// Most watchers at once.
pub const MAX_WATCHES: usize = 1_000;
/// Source of the events published.
const SOURCE: &str = "worker";

/// How the worker runs jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Jobs running at once.
    pub concurrency: usize,
    /// Lease of an attempt, renewed at every progress poll (at most a call
    /// timeout apart). It bounds how long a worker that stalls, or dies
    /// holding JetStream jobs, keeps them from the others.
    pub lease: Duration,
    /// How often an idle runner looks for due jobs.
    pub idle_poll: Duration,
    /// How often a running transcode's progress is fetched.
    pub progress_poll: Duration,
    /// Delay before retry n.
    pub backoff: Backoff,
    /// Deadline of each call to another service.
    pub call_timeout: Duration,
    /// Longest one attempt may take.
    pub attempt_timeout: Duration,
    /// Most unfinished jobs stored.
    pub max_active: u64,
}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    /// A concurrency, lease, poll, timeout or limit of zero.
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("concurrency", self.concurrency == 0),
            ("lease", self.lease.is_zero()),
            ("idle poll", self.idle_poll.is_zero()),
            ("progress poll", self.progress_poll.is_zero()),
            ("call timeout", self.call_timeout.is_zero()),
            ("attempt timeout", self.attempt_timeout.is_zero()),
            ("max active jobs", self.max_active == 0),
        ];
        match zero.iter().find(|(_, z)| *z) {
            Some((name, _)) => Err(format!("worker {name} must be positive")),
            None => Ok(()),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            concurrency: super::CONCURRENCY,
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_secs(1),
            progress_poll: Duration::from_millis(500),
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
            },
            call_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(20 * 60),
            max_active: 100_000,
        }
    }
}

/// A job submission, as asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Submit {
    /// Job kind.
    pub kind: String,
    /// JSON object text.
    pub payload_json: String,
    /// 0 = [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// Empty = none; else also the job's id.
    pub idempotency_key: String,
    /// Delay before it may run.
    pub delay_ms: u64,
}

/// Why an attempt stopped short of success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// It failed; retried unless `permanent` or out of attempts.
    Failed {
        /// Why, as users read it (the job's `last_error`): a few fixed
        /// words, no key, path or other service's text.
        reason: String,
        /// What happened, for the log (with the job id).
        detail: String,
        /// Retrying cannot help (e.g. a malformed payload).
        permanent: bool,
    },
    /// The job was cancelled or its lease lost: nothing more to record.
    Abandoned,
}

impl Stop {
    /// A failure worth retrying: `reason` for users, `detail` for the log.
    #[must_use]
    pub fn failed(reason: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Failed {
            reason: reason.into(),
            detail: detail.to_string(),
            permanent: false,
        }
    }

    /// A failure retries cannot fix: `reason` for users, `detail` for the log.
    #[must_use]
    pub fn permanent(reason: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Self::Failed {
            reason: reason.into(),
            detail: detail.to_string(),
            permanent: true,
        }
    }
}

/// True for 1..=64 bytes of `[a-z0-9_.-]`.
fn is_kind(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Checks a kind filter or submission kind.
///
/// # Errors
/// [`WorkerError::Invalid`] naming `field`.
pub fn check_kind(field: &str, kind: &str) -> Result<(), WorkerError> {
    if is_kind(kind) {
        Ok(())
    } else {
        Err(WorkerError::Invalid(format!(
            "{field}: expected 1..=64 bytes of [a-z0-9_.-]"
        )))
    }
}

/// Checks `req`; returns the video the job is about, if any.
///
/// # Errors
/// [`WorkerError::Invalid`] naming the field.
pub fn validate(req: &Submit) -> Result<Option<String>, WorkerError> {
    let invalid = |m: String| WorkerError::Invalid(m);
    check_kind("kind", &req.kind)?;
    if !PAYLOAD_BYTES.contains(&req.payload_json.len()) {
        return Err(invalid(format!(
            "payload_json: must be 2..=65536 bytes, got {}",
            req.payload_json.len()
        )));
    }
    let value: serde_json::Value = serde_json::from_str(&req.payload_json)
        .map_err(|e| invalid(format!("payload_json: invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(invalid("payload_json: must be a JSON object".into()));
    }
    if req.max_attempts > MAX_ATTEMPTS {
        return Err(invalid(format!("max_attempts: above {MAX_ATTEMPTS}")));
    }
    if req.delay_ms > MAX_DELAY_MS {
        return Err(invalid(format!("delay_ms: above {MAX_DELAY_MS}")));
    }
    if !req.idempotency_key.is_empty() {
        media::check_id("idempotency_key", &req.idempotency_key).map_err(invalid)?;
    }
    match req.kind.as_str() {
        media::TRANSCODE_JOB => {
            let p = transcode::parse(&req.payload_json)
                .map_err(|e| invalid(format!("payload_json: {e}")))?;
            Ok(Some(p.video_id))
        }
        other => Err(invalid(format!("kind: unknown job kind {other:?}"))),
    }
}

/// The worker's shared core.
pub struct Jobs {
    /// The job table.
    pub store: Store,
    /// How jobs run.
    pub config: Config,
    bus: Arc<dyn EventBus>,
    wake: Notify,
    watches: Arc<Semaphore>,
    metrics: Metrics,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Jobs {
    /// A core over `store`, publishing on `bus`.
    #[must_use]
    pub fn new(store: Store, bus: Arc<dyn EventBus>, config: Config) -> Self {
        Self {
            store,
            config,
            bus,
            wake: Notify::new(),
            watches: Arc::new(Semaphore::new(MAX_WATCHES)),
            metrics: Metrics::default(),
        }
    }

    /// Counts job outcomes (completed, failed attempts, dead letters) in
    /// `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    async fn publish<P: events::Payload + Sync>(&self, payload: &P) {
        if let Err(e) = events::publish(self.bus.as_ref(), SOURCE, payload).await {
            tracing::warn!(kind = ?P::KIND, error = %e, "publishing failed");
        }
    }

    /// Validates and stores a job (or finds the one with its idempotency
    /// key: true = deduplicated); publishes JobSubmitted for a new one.
    ///
    /// # Errors
    /// Invalid request; too many unfinished jobs; store failures.
    pub async fn submit(&self, req: Submit) -> Result<(Job, bool), WorkerError> {
        let video_id = validate(&req)?;
        let id = if req.idempotency_key.is_empty() {
            rt::random_hex128()
        } else {
            req.idempotency_key.clone()
        };
        let max_attempts = match req.max_attempts {
            0 => DEFAULT_MAX_ATTEMPTS,
            n => n,
        };
        let mut job = Job::new(
            id,
            req.kind,
            req.payload_json,
            max_attempts,
            req.idempotency_key,
            rt::unix_ms(),
            req.delay_ms,
        );
        // Its attempts continue the submitter's trace.
        job.trace = rt::trace::current().map(|c| c.header()).unwrap_or_default();
        let (job, deduplicated) = self.store.submit(job, self.config.max_active).await?;
        if !deduplicated {
            tracing::info!(job_id = %job.id, kind = %job.kind, "job submitted");
            let p = JobSubmitted {
                job_id: job.id.clone(),
                kind: job.kind.clone(),
                video_id,
            };
            self.publish(&p).await;
            self.wake.notify_one();
        }
        Ok((job, deduplicated))
    }

    /// The job `id`.
    ///
    /// # Errors
    /// Unknown job; store failures.
    pub async fn get(&self, id: &str) -> Result<Job, WorkerError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| WorkerError::NotFound(id.to_owned()))
    }

    /// Cancels the job `id` (its runner notices at its next renewal).
    ///
    /// # Errors
    /// Unknown or already ended job; store failures.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, WorkerError> {
        let reason = reason.to_owned();
        let (job, ()) = self
            .store
            .update(id, move |j| j.cancel(rt::unix_ms(), &reason))
            .await?;
        Ok(job)
    }

    /// Renews the lease of `attempt` of `id`, recording its progress.
    ///
    /// # Errors
    /// The job ended or the lease was lost; store failures.
    pub async fn renew(&self, id: &str, attempt: u32, progress: u32) -> Result<(), WorkerError> {
        let lease = millis(self.config.lease);
        self.store
            .update(id, move |j| {
                j.renew(attempt, rt::unix_ms(), lease, progress)
            })
            .await
            .map(drop)
    }

    /// Records that `attempt` of `job` succeeded; publishes JobCompleted.
    pub async fn succeeded(&self, job: &Job, attempt: u32) {
        match self
            .store
            .update(&job.id, move |j| j.succeed(attempt, rt::unix_ms()))
            .await
        {
            Ok((done, ())) => {
                tracing::info!(job_id = %done.id, attempts = done.attempts, "job succeeded");
                self.metrics.job_completed();
                let p = JobCompleted {
                    job_id: done.id,
                    kind: done.kind,
                    attempts: done.attempts,
                };
                self.publish(&p).await;
            }
            Err(e) => tracing::warn!(job_id = %job.id, error = %e, "success not recorded"),
        }
    }

    /// Records that `attempt` of `job` failed with `reason` (what users
    /// read): retry after a backoff, or dead-letter; publishes JobFailed
    /// either way.
    pub async fn failed(&self, job: &Job, attempt: u32, reason: &str, permanent: bool) {
        let delay = self.config.backoff.delay(attempt, rt::rng().r#gen::<f64>());
        let (delay_ms, why) = (millis(delay), reason.to_owned());
        let recorded = self
            .store
            .update(&job.id, move |j| {
                j.fail(attempt, rt::unix_ms(), &why, delay_ms, permanent)
            })
            .await;
        match recorded {
            Ok((failed, dead_letter)) => self.publish_failed(&failed, dead_letter).await,
            Err(e) => tracing::warn!(job_id = %job.id, error = %e, "failure not recorded"),
        }
    }

    /// Publishes JobFailed for jobs whose attempt was lost (lease expired,
    /// or the worker restarted).
    pub async fn lost(&self, jobs: Vec<Job>) {
        for job in jobs {
            let dead = job.state == JobState::DeadLetter;
            self.publish_failed(&job, dead).await;
        }
    }

    async fn publish_failed(&self, job: &Job, dead_letter: bool) {
        tracing::warn!(job_id = %job.id, attempts = job.attempts, dead_letter, error = %job.last_error, "job attempt failed");
        self.metrics.job_attempt_failed(dead_letter);
        let p = JobFailed {
            job_id: job.id.clone(),
            kind: job.kind.clone(),
            attempts: job.attempts,
            reason: job.last_error.clone(),
            dead_letter,
        };
        self.publish(&p).await;
        // A transcode job that gives up may never have reached a transcoder
        // (none could be found): say so for the video, or it would wait in
        // its state for ever.
        if dead_letter
            && job.kind == media::TRANSCODE_JOB
            && let Ok(payload) = transcode::parse(&job.payload_json)
        {
            let failed = events::TranscodingFailed {
                video_id: payload.video_id,
                job_id: job.id.clone(),
                reason: format!(
                    "gave up after {} attempts: {}",
                    job.attempts, job.last_error
                ),
            };
            self.publish(&failed).await;
        }
    }

    /// Waits until a job is submitted or `idle` passes.
    pub async fn woken(&self, idle: Duration) {
        let _ = rt::timeout(idle, self.wake.notified()).await;
    }

    /// A watcher's slot.
    ///
    /// # Errors
    /// [`WorkerError::TooManyWatches`].
    pub fn watch_permit(&self) -> Result<OwnedSemaphorePermit, WorkerError> {
        self.watches
            .clone()
            .try_acquire_owned()
            .map_err(|_| WorkerError::TooManyWatches)
    }

    /// Whether `e` says the job ended or moved on (the attempt should stop).
    #[must_use]
    pub fn is_gone(e: &WorkerError) -> bool {
        matches!(e, WorkerError::NotFound(_) | WorkerError::Refused(..))
    }

    /// Whether `e` says the job was cancelled.
    #[must_use]
    pub fn is_cancelled(e: &WorkerError) -> bool {
        matches!(
            e,
            WorkerError::Refused(_, Refused::Terminal(JobState::Cancelled))
        )
    }
}
