//! What the monitor refuses, and the gRPC status of each.

use tonic::Status;

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
}

impl From<super::book::Unknown> for MonitorError {
    fn from(e: super::book::Unknown) -> Self {
        Self::NotFound(e.0)
    }
}

impl From<MonitorError> for Status {
    fn from(e: MonitorError) -> Self {
        match e {
            MonitorError::Invalid(_) => Status::invalid_argument(e.to_string()),
            MonitorError::NotFound(_) => Status::not_found(e.to_string()),
            MonitorError::TooManyWatches => Status::resource_exhausted(e.to_string()),
        }
    }
}
