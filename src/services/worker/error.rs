//! What the worker refuses or fails at, and the gRPC status of each.

use tonic::Status;

use super::queue::Refused;

/// A worker failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such job.
    #[error("no job {0:?}")]
    NotFound(String),
    /// The job's state does not allow the operation.
    #[error("job {0:?}: {1}")]
    Refused(String, Refused),
    /// Too many unfinished jobs.
    #[error("{0} jobs are unfinished; try later")]
    Full(u64),
    /// Too many watchers.
    #[error("too many jobs are watched; try later")]
    TooManyWatches,
    /// The job store failed.
    #[error("job store: {0}")]
    Store(String),
    /// The job store cannot be reached (NATS); retrying may help.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for WorkerError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Invalid(_) => Status::invalid_argument(e.to_string()),
            WorkerError::NotFound(_) => Status::not_found(e.to_string()),
            WorkerError::Refused(..) => Status::failed_precondition(e.to_string()),
            WorkerError::Full(_) | WorkerError::TooManyWatches => {
                Status::resource_exhausted(e.to_string())
            }
            WorkerError::Store(_) => Status::internal(e.to_string()),
            WorkerError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}
