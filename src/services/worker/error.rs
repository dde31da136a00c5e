//! What the worker refuses or fails at, and the gRPC status of each.

use std::path::PathBuf;

use tonic::Status;

use super::queue::Refused;
use crate::error::{Classify, ErrorKind};
use crate::rt;

/// A low-level cause, kept for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A worker failure.
#[derive(Debug, thiserror::Error)]
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
    /// A watch reached its longest life.
    #[error("watch lasted its limit; watch again")]
    WatchEnded,
    /// The SQLite job table failed.
    #[error("job store failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The job table's directory could not be created.
    #[error("job store dir {}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A job record does not encode or decode.
    #[error("job record {key:?} is unreadable")]
    Record {
        /// The record's key (the job id).
        key: String,
        /// Why: malformed JSON or an inconsistent job.
        #[source]
        source: Cause,
    },
    /// More job records than one list reads.
    #[error("{0} job records are more than a list reads")]
    TooManyRecords(u64),
    /// The job table's schema cannot be used (written by a newer binary, or
    /// a migration failed).
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// A store task ended without an answer (it panicked).
    #[error("job store task failed")]
    Task(#[from] rt::JoinError),
    /// The job store cannot be reached (NATS), or a change kept racing;
    /// retrying may help.
    #[error("job store unavailable: {what}")]
    Unavailable {
        /// What was being done.
        what: String,
        /// The server's or client's failure, if one.
        #[source]
        source: Option<Cause>,
    },
}

impl WorkerError {
    /// [`WorkerError::Unavailable`] while doing `what`, for `source`.
    pub fn unavailable(what: impl Into<String>, source: impl Into<Cause>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

/// Refusals compare by value, failures by kind and message (their sources
/// do not compare): enough for tests to say which error came back.
impl PartialEq for WorkerError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Invalid(a), Self::Invalid(b)) | (Self::NotFound(a), Self::NotFound(b)) => a == b,
            (Self::Refused(a, x), Self::Refused(b, y)) => a == b && x == y,
            (Self::Full(a), Self::Full(b)) => a == b,
            (a, b) => {
                std::mem::discriminant(a) == std::mem::discriminant(b)
                    && a.to_string() == b.to_string()
            }
        }
    }
}

impl Eq for WorkerError {}

impl Classify for WorkerError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Refused(..) => ErrorKind::Conflict,
            Self::Full(_) | Self::TooManyWatches => ErrorKind::Exhausted,
            Self::WatchEnded => ErrorKind::DeadlineExceeded,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Sqlite(e) => crate::sqlite::kind(e),
            Self::Dir { .. }
            | Self::Record { .. }
            | Self::TooManyRecords(_)
            | Self::Task(_)
            | Self::Schema(_) => ErrorKind::Internal,
        }
    }
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Self {
        crate::error::status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes_and_causes_stay_inside() {
        let cases = [
            (WorkerError::Invalid("x".into()), Code::InvalidArgument),
            (WorkerError::NotFound("j".into()), Code::NotFound),
            (
                WorkerError::Refused("j".into(), Refused::NotEligible),
                Code::FailedPrecondition,
            ),
            (WorkerError::Full(1), Code::ResourceExhausted),
            (WorkerError::TooManyWatches, Code::ResourceExhausted),
            (
                WorkerError::Sqlite(rusqlite::Error::InvalidQuery),
                Code::Internal,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        let down = WorkerError::unavailable("read job j1", "nats: connection reset by peer");
        let status = Status::from(down);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "job store unavailable: read job j1")
        );
    }
}
