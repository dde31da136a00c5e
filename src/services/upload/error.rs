//! What the upload service refuses or fails at, and the gRPC status of each.

use std::time::Duration;

use super::store::StoreError;
use crate::blob::BlobError;
use crate::bus::BusError;
use crate::client::PoolError;
use crate::error::{Classify, ErrorKind};

/// A failed upload request.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A request field or chunk breaks its limits; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// More bytes than the service takes.
    #[error("{0}")]
    TooLarge(String),
    /// No such upload.
    #[error("no upload {0}")]
    NotFound(String),
    /// The client sent nothing for this long.
    #[error("upload stream: no chunk for {} s", .0.as_secs())]
    Idle(Duration),
    /// Reading the client's stream failed: a message that does not decode
    /// is the client's fault (tonic reports it as INTERNAL); anything else
    /// (the call cancelled, its deadline passed) keeps its code.
    #[error("upload stream: {}", .0.message())]
    Stream(tonic::Status),
    /// The blob store refused or failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The upload records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A commit task ended without an answer (it panicked).
    #[error("upload commit task failed")]
    Task(#[from] crate::rt::JoinError),
    /// No metadata instance could be reached.
    #[error("metadata: {0}")]
    NoMetadata(#[from] PoolError),
    /// The catalog refused or failed to record the video.
    #[error(transparent)]
    Metadata(crate::error::Upstream),
    /// FileUploaded could not be built (a bug).
    #[error("the FileUploaded event does not encode")]
    Encode(#[source] BusError),
    /// FileUploaded could not be published.
    #[error("event bus unavailable")]
    Bus(#[source] BusError),
    /// Recording and announcing the upload took too long; it was undone.
    #[error("storing the upload took longer than {} s; nothing was kept", .0.as_secs())]
    CommitTimeout(Duration),
    /// AdoptParts: a part is not in this service's blob store (the caller's
    /// store is not this one).
    #[error("part {0} is not in the upload service's blob store")]
    PartMissing(String),
}

impl Classify for UploadError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::TooLarge(_) => ErrorKind::Exhausted,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::PartMissing(_) => ErrorKind::Conflict,
            Self::Idle(_) => ErrorKind::DeadlineExceeded,
            Self::Stream(s) => match s.code() {
                tonic::Code::Internal | tonic::Code::Unknown => ErrorKind::Invalid,
                code => ErrorKind::from_code(code),
            },
            Self::Blob(e) => e.kind(),
            Self::Metadata(e) => e.kind(),
            Self::NoMetadata(_) | Self::Bus(_) | Self::CommitTimeout(_) => ErrorKind::Unavailable,
            Self::Store(e) => e.kind(),
            Self::Task(_) | Self::Encode(_) => ErrorKind::Internal,
        }
    }
}

impl From<UploadError> for tonic::Status {
    fn from(e: UploadError) -> Self {
        crate::error::status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes_and_internals_stay_inside() {
        let cases = [
            (UploadError::Invalid("x".into()), Code::InvalidArgument),
            (UploadError::TooLarge("x".into()), Code::ResourceExhausted),
            (UploadError::NotFound("u1".into()), Code::NotFound),
            (
                UploadError::PartMissing("tus/u/x/p0".into()),
                Code::FailedPrecondition,
            ),
            (
                UploadError::Idle(Duration::from_secs(60)),
                Code::DeadlineExceeded,
            ),
            (
                UploadError::Stream(tonic::Status::internal("failed to decode")),
                Code::InvalidArgument,
            ),
            (
                UploadError::NoMetadata(PoolError::NoInstance("metadata".into())),
                Code::Unavailable,
            ),
            (
                UploadError::Bus(BusError::Unavailable("nats: connection reset".into())),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(tonic::Status::from(e).code(), code);
        }
        let bus = tonic::Status::from(UploadError::Bus(BusError::Unavailable(
            "nats: connection reset".into(),
        )));
        assert_eq!(bus.message(), "event bus unavailable");
        let io = UploadError::Blob(BlobError::Io(std::io::Error::other("EIO at /srv/tmp/x")));
        let status = tonic::Status::from(io);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("EIO"), "{}", status.message());
        // The disk's own failures: a full one, and one that fails writes.
        let full = UploadError::Blob(BlobError::Io(std::io::Error::from_raw_os_error(28)));
        let status = tonic::Status::from(full);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), crate::error::STORAGE_FULL_MESSAGE);
        let eio = UploadError::Blob(BlobError::Io(std::io::Error::from_raw_os_error(5)));
        let status = tonic::Status::from(eio);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "blob store I/O failed")
        );
    }
}
