//! Requests the transcoder refuses, and the gRPC status of each.

use tonic::Status;

use super::state::Phase;

/// A refused transcoder request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscoderError {
    /// Bad input; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// No such transcode.
    #[error("no transcode {0:?}")]
    NotFound(String),
    /// The transcode already ended.
    #[error("transcode {0:?} already finished ({1:?})")]
    Finished(String, Phase),
    /// The idempotency key was used for another video.
    #[error("idempotency_key {0:?} belongs to another video")]
    KeyReused(String),
    /// Too much unfinished work.
    #[error("{0} transcodes are unfinished; try later")]
    Busy(usize),
}

impl From<TranscoderError> for Status {
    fn from(e: TranscoderError) -> Self {
        match e {
            TranscoderError::Invalid(_) => Status::invalid_argument(e.to_string()),
            TranscoderError::NotFound(_) => Status::not_found(e.to_string()),
            TranscoderError::Finished(..) => Status::failed_precondition(e.to_string()),
            TranscoderError::KeyReused(_) => Status::already_exists(e.to_string()),
            TranscoderError::Busy(_) => Status::resource_exhausted(e.to_string()),
        }
    }
}
