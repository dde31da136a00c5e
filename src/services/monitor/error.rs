//! What the monitor refuses, and the gRPC status of each.

use tonic::Status;

use crate::error::{Classify, ErrorKind};

/// A monitor failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such alert (never raised, or dropped as too old).
    #[error("no alert {0:?}")]
    NotFound(String),
    /// Too many alert watches open.
    #[error("too many alert watches; try later")]
    TooManyWatches,
    /// A watch missed changes (its reader was too slow).
    #[error("watch fell {0} changes behind; watch again")]
    FellBehind(u64),
    /// A watch reached its longest life.
    #[error("watch lasted its limit; watch again")]
    WatchEnded,
}

impl From<super::book::Unknown> for MonitorError {
    fn from(e: super::book::Unknown) -> Self {
        Self::NotFound(e.0)
    }
}

impl Classify for MonitorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::TooManyWatches => ErrorKind::Exhausted,
            Self::FellBehind(_) => ErrorKind::Aborted,
            Self::WatchEnded => ErrorKind::DeadlineExceeded,
        }
    }
}

impl From<MonitorError> for Status {
    fn from(e: MonitorError) -> Self {
        crate::error::status(&e)
    }
}
