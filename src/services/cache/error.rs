//! What the cache refuses, and the gRPC status of each.

use std::time::Duration;

use super::state::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::error::{Classify, ErrorKind};

/// A request the cache refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Empty, too long, or containing NUL.
    #[error("key must be 1..={MAX_KEY_BYTES} bytes without NUL")]
    BadKey,
    /// Over [`MAX_VALUE_BYTES`].
    #[error("value of {0} bytes exceeds {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    /// Over the longest TTL.
    #[error("ttl of {0:?} exceeds 24h")]
    TtlTooLong(Duration),
    /// Larger than the whole cache.
    #[error("entry of {0} bytes cannot fit in the cache")]
    NoRoom(u64),
}

impl Classify for CacheError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BadKey | Self::ValueTooLarge(_) | Self::TtlTooLong(_) => ErrorKind::Invalid,
            Self::NoRoom(_) => ErrorKind::Exhausted,
        }
    }
}

impl From<CacheError> for tonic::Status {
    fn from(e: CacheError) -> Self {
        crate::error::status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes() {
        for (e, code) in [
            (CacheError::BadKey, Code::InvalidArgument),
            (CacheError::ValueTooLarge(1), Code::InvalidArgument),
            (CacheError::TtlTooLong(Duration::MAX), Code::InvalidArgument),
            (CacheError::NoRoom(1), Code::ResourceExhausted),
        ] {
            let message = e.to_string();
            let status = tonic::Status::from(e);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }
    }
}
