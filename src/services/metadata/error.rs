//! What the catalog refuses or fails at, and the gRPC status of each.

use super::store::StoreError;
use crate::error::{Classify, ErrorKind};

/// A failed catalog request.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// A request field breaks its limits; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// No such video.
    #[error("no video {0}")]
    NotFound(String),
    /// The video's state does not allow the change (a state move that is
    /// not allowed, or a change since `expected_updated_at_ms`).
    #[error("{0}")]
    Conflict(String),
    /// The store refused (a taken id) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for MetadataError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Store(StoreError::Exists(_)) => ErrorKind::AlreadyExists,
            Self::Store(StoreError::Database(_)) => ErrorKind::Unavailable,
            Self::Store(StoreError::Sqlite(e)) => crate::sqlite::kind(e),
            #[cfg(not(madsim))]
            Self::Store(StoreError::Postgres(e)) => e.kind(),
            Self::Store(StoreError::Corrupt(_) | StoreError::Schema(_) | StoreError::Task(_)) => {
                ErrorKind::Internal
            }
        }
    }
}

impl From<MetadataError> for tonic::Status {
    fn from(e: MetadataError) -> Self {
        crate::error::status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes_and_sqlite_stays_inside() {
        let cases = [
            (
                MetadataError::Invalid("title: x".into()),
                Code::InvalidArgument,
            ),
            (MetadataError::NotFound("v1".into()), Code::NotFound),
            (
                MetadataError::Conflict("state".into()),
                Code::FailedPrecondition,
            ),
            (StoreError::Exists("v1".into()).into(), Code::AlreadyExists),
        ];
        for (e, code) in cases {
            assert_eq!(tonic::Status::from(e).code(), code);
        }
        let sqlite = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some("database disk image is malformed".into()),
        );
        let status = tonic::Status::from(MetadataError::from(StoreError::from(sqlite)));
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with("internal error") && !status.message().contains("disk"),
            "{}",
            status.message()
        );
    }
}
