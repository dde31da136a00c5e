//! WorkerService over gRPC: submit, get, cancel, list (cursor pages) and
//! watch (a bounded stream polling the store until the job ends).

use crate::error::status_for;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Response, Status};

use super::error::WorkerError;
use super::jobs::{self, Jobs, Submit};
use super::queue::{self, JobState};
use super::store::Filter;
use crate::proto::worker_service_server::WorkerService;
use crate::proto::{
    self, CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobResponse, JobProgress,
    ListJobsRequest, ListJobsResponse, SubmitJobRequest, SubmitJobResponse, WatchJobRequest,
};
use crate::rt;
use crate::services::media;

/// Page size when a request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Longest cancel reason, bytes.
pub const MAX_REASON: usize = 256;
/// How often a watch looks at the job.
pub const WATCH_POLL: Duration = Duration::from_millis(500);
/// Longest a watch stream lasts; the client may watch again.
pub const MAX_WATCH: Duration = Duration::from_secs(3600);
/// Longest progress message, bytes.
const MAX_MESSAGE: usize = 512;

/// The gRPC face of the worker.
#[derive(Debug, Clone)]
pub struct WorkerServer {
    jobs: Arc<Jobs>,
}

impl WorkerServer {
    /// A server over `jobs`.
    #[must_use]
    pub fn new(jobs: Arc<Jobs>) -> Self {
        Self { jobs }
    }
}

fn to_proto_state(s: JobState) -> proto::JobState {
    match s {
        JobState::Queued => proto::JobState::Queued,
        JobState::Leased => proto::JobState::Leased,
        JobState::Succeeded => proto::JobState::Succeeded,
        JobState::Failed => proto::JobState::Failed,
        JobState::DeadLetter => proto::JobState::DeadLetter,
        JobState::Cancelled => proto::JobState::Cancelled,
    }
}

fn state_filter(raw: i32) -> Result<Option<JobState>, WorkerError> {
    let bad = || WorkerError::Invalid(format!("state: unknown job state {raw}"));
    Ok(match proto::JobState::try_from(raw).map_err(|_| bad())? {
        proto::JobState::Unspecified => None,
        proto::JobState::Queued => Some(JobState::Queued),
        proto::JobState::Leased => Some(JobState::Leased),
        proto::JobState::Succeeded => Some(JobState::Succeeded),
        proto::JobState::Failed => Some(JobState::Failed),
        proto::JobState::DeadLetter => Some(JobState::DeadLetter),
        proto::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

fn ms(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms).unwrap_or(i64::MAX)
}

fn to_proto(j: &queue::Job) -> proto::Job {
    proto::Job {
        id: j.id.clone(),
        kind: j.kind.clone(),
        payload_json: j.payload_json.clone(),
        state: to_proto_state(j.state).into(),
        attempts: j.attempts,
        max_attempts: j.max_attempts,
        last_error: j.last_error.clone(),
        created_at_ms: ms(j.created_ms),
        updated_at_ms: ms(j.updated_ms),
        progress_percent: j.progress,
        idempotency_key: j.idempotency_key.clone(),
    }
}

/// The watch update for `j`.
fn progress(j: &queue::Job) -> JobProgress {
    let message = match j.state {
        JobState::Queued if j.attempts == 0 => "queued".to_owned(),
        JobState::Queued | JobState::Failed | JobState::DeadLetter | JobState::Cancelled => {
            j.last_error.clone()
        }
        JobState::Leased => format!("attempt {} of {}", j.attempts, j.max_attempts),
        JobState::Succeeded => "done".to_owned(),
    };
    JobProgress {
        job_id: j.id.clone(),
        state: to_proto_state(j.state).into(),
        progress_percent: j.progress,
        message: queue::truncate(&message, MAX_MESSAGE),
        attempts: j.attempts,
        at_ms: ms(rt::unix_ms()),
        terminal: j.state.is_terminal(),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), WorkerError> {
    media::check_id(field, id).map_err(WorkerError::Invalid)
}

/// The page token continuing before `seq`.
fn token(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn parse_token(token: &str) -> Result<Option<i64>, WorkerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || WorkerError::Invalid("page_token: not a token from this service".into());
    if token.len() > 512 {
        return Err(bad());
    }
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    let seq: i64 = text
        .strip_prefix("seq:")
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)?;
    Ok(Some(seq))
}

/// What a watch stream carries between polls.
struct Watch {
    jobs: Arc<Jobs>,
    id: String,
    next: Option<queue::Job>,
    last: Option<(JobState, u32, u32)>,
    until: rt::Instant,
    done: bool,
    /// The watch call's: the stream is polled outside its task-local one.
    request_id: Option<String>,
    _permit: OwnedSemaphorePermit,
}

/// The next update of a watch, `None` when it ends.
async fn next_update(mut w: Watch) -> Option<(Result<JobProgress, Status>, Watch)> {
    loop {
        if w.done {
            return None;
        }
        let job = match w.next.take() {
            Some(job) => job,
            None => {
                if rt::now() >= w.until {
                    w.done = true;
                    let late = status_for(&WorkerError::WatchEnded, w.request_id.as_deref());
                    return Some((Err(late), w));
                }
                rt::sleep(WATCH_POLL).await;
                match w.jobs.get(&w.id).await {
                    Ok(job) => job,
                    Err(e) => {
                        w.done = true;
                        return Some((Err(status_for(&e, w.request_id.as_deref())), w));
                    }
                }
            }
        };
        let seen = (job.state, job.progress, job.attempts);
        if w.last == Some(seen) {
            continue;
        }
        w.last = Some(seen);
        w.done = job.state.is_terminal();
        return Some((Ok(progress(&job)), w));
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<JobProgress, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerServer {
    async fn submit_job(
        &self,
        req: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let req = req.into_inner();
        let submit = Submit {
            kind: req.kind,
            payload_json: req.payload_json,
            max_attempts: req.max_attempts,
            idempotency_key: req.idempotency_key,
            delay_ms: req.delay_ms,
        };
        let (job, deduplicated) = self.jobs.submit(submit).await?;
        Ok(Response::new(SubmitJobResponse {
            job: Some(to_proto(&job)),
            deduplicated,
        }))
    }

    async fn get_job(
        &self,
        req: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let id = req.into_inner().job_id;
        check_id("job_id", &id)?;
        let job = self.jobs.get(&id).await?;
        Ok(Response::new(GetJobResponse {
            job: Some(to_proto(&job)),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let req = req.into_inner();
        check_id("job_id", &req.job_id)?;
        if req.reason.len() > MAX_REASON {
            return Err(WorkerError::Invalid(format!("reason: exceeds {MAX_REASON} bytes")).into());
        }
        let job = self.jobs.cancel(&req.job_id, &req.reason).await?;
        Ok(Response::new(CancelJobResponse {
            job: Some(to_proto(&job)),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let req = req.into_inner();
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => {
                return Err(
                    WorkerError::Invalid(format!("page_size: above {MAX_PAGE_SIZE}")).into(),
                );
            }
            n => n,
        };
        let kind = if req.kind.is_empty() {
            None
        } else {
            jobs::check_kind("kind", &req.kind)?;
            Some(req.kind)
        };
        let filter = Filter {
            state: state_filter(req.state)?,
            kind,
            before_seq: parse_token(&req.page_token)?,
        };
        let (page, next) = self.jobs.store.list(filter, limit).await?;
        Ok(Response::new(ListJobsResponse {
            jobs: page.iter().map(to_proto).collect(),
            next_page_token: next.map(token).unwrap_or_default(),
        }))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        req: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        check_id("job_id", &id)?;
        let permit = self.jobs.watch_permit()?;
        let job = self.jobs.get(&id).await?;
        let watch = Watch {
            jobs: self.jobs.clone(),
            id,
            next: Some(job),
            last: None,
            until: rt::now() + MAX_WATCH,
            done: false,
            request_id: rt::trace::request_id(),
            _permit: permit,
        };
        let stream: WatchStream = Box::pin(futures::stream::unfold(watch, next_update));
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_junk_is_refused() {
        assert_eq!(parse_token(&token(42)).unwrap(), Some(42));
        assert_eq!(parse_token("").unwrap(), None);
        for bad in ["!!", "c2VxOng", &"a".repeat(600)] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
        assert!(state_filter(99).is_err());
        assert_eq!(state_filter(0).unwrap(), None);
    }
}
