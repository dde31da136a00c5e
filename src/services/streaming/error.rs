//! What can go wrong serving video bytes, and the gRPC status of each.

use crate::blob::BlobError;
use crate::services::media;

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

impl From<StreamingError> for tonic::Status {
    fn from(e: StreamingError) -> Self {
        use StreamingError as E;
        match e {
            E::BadInput(m) => Self::invalid_argument(m),
            E::Blob(b) => media::blob_status(&b),
            E::NoVideo(_) | E::Missing(_) | E::NoSession(_) => Self::not_found(e.to_string()),
            E::NotReady(_) => Self::failed_precondition(e.to_string()),
            E::OutOfRange { .. } => Self::out_of_range(e.to_string()),
            E::TooLarge { .. } | E::NotUtf8(_) => Self::internal(e.to_string()),
            E::TooManySessions(_) => Self::resource_exhausted(e.to_string()),
        }
    }
}
