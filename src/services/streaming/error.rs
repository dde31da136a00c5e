//! What can go wrong serving video bytes, and the gRPC status of each.

use crate::blob::BlobError;
use crate::error::{Classify, ErrorKind};

/// A streaming call failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// A request field is invalid.
    #[error("{0}")]
    BadInput(String),
    /// The blob store failed or had nothing under the key.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Neither the video's original nor its HLS tree exists.
    #[error("no video {0:?}")]
    NoVideo(String),
    /// The original exists but the HLS master does not yet.
    #[error("video {0:?} is not ready")]
    NotReady(String),
    /// The video is ready but has no such rendition or segment.
    #[error("no {0}")]
    Missing(String),
    /// The requested offset lies at or past the end of the original.
    #[error("offset {offset} is past the end of the original ({size} bytes)")]
    OutOfRange {
        /// The requested offset.
        offset: u64,
        /// The original's size.
        size: u64,
    },
    /// A stored playlist or segment is larger than the contract allows.
    #[error("{what} exceeds {limit} bytes")]
    TooLarge {
        /// Which blob.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A stored playlist is not UTF-8.
    #[error("playlist {0:?} is not UTF-8")]
    NotUtf8(String),
    /// As many sessions are live as allowed.
    #[error("too many live sessions (limit {0})")]
    TooManySessions(usize),
    /// No such session (never started, or forgotten long after it stopped).
    #[error("no session {0:?}")]
    NoSession(String),
}

impl Classify for StreamingError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BadInput(_) => ErrorKind::Invalid,
            Self::Blob(b) => b.kind(),
            Self::NoVideo(_) | Self::Missing(_) | Self::NoSession(_) => ErrorKind::NotFound,
            Self::NotReady(_) => ErrorKind::Conflict,
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
            Self::TooLarge { .. } | Self::NotUtf8(_) => ErrorKind::Internal,
            Self::TooManySessions(_) => ErrorKind::Exhausted,
        }
    }
}

impl From<StreamingError> for tonic::Status {
    fn from(e: StreamingError) -> Self {
        crate::error::status(&e)
    }
}
