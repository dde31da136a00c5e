//! Requests the transcoder refuses, and the gRPC status of each.

use tonic::Status;

use super::state::Phase;
use crate::error::{Classify, ErrorKind};

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

impl Classify for TranscoderError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Finished(..) => ErrorKind::Conflict,
            Self::KeyReused(_) => ErrorKind::AlreadyExists,
            Self::Busy(_) => ErrorKind::Exhausted,
        }
    }
}

impl From<TranscoderError> for Status {
    fn from(e: TranscoderError) -> Self {
        crate::error::status(&e)
    }
}
