//! The auth service's errors and their gRPC statuses. Messages never carry
//! a password, a token or a secret.

use tonic::Status;

/// A failed auth request.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field breaks its limits.
    #[error("{0}")]
    Invalid(String),
    /// Unknown email or wrong password; which one is never said.
    #[error("invalid email or password")]
    BadCredentials,
    /// Sign-up with an email that has an account.
    #[error("email already registered")]
    EmailTaken,
    /// Too many log-in attempts (see `limit.rs`).
    #[error("too many log-in attempts; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When the next attempt is allowed.
        retry_after_ms: u64,
    },
    /// A token or client secret was refused (why, without echoing it).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A service asked for scopes beyond its own.
    #[error("{0}")]
    Forbidden(String),
    /// IssueServiceToken without any configured service client.
    #[error(
        "no service clients are configured on the auth service; service tokens cannot be issued"
    )]
    NoServiceClients,
    /// SQLite failed.
    #[error("auth store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Signing a token, or hashing a password, failed (a bug or a broken
    /// configuration, never the client's input).
    #[error("auth: {0}")]
    Internal(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let msg = e.to_string();
        match e {
            AuthError::Invalid(_) => Status::invalid_argument(msg),
            AuthError::BadCredentials | AuthError::Unauthenticated(_) => {
                Status::unauthenticated(msg)
            }
            AuthError::EmailTaken => Status::already_exists(msg),
            AuthError::RateLimited { retry_after_ms } => {
                let mut status = Status::resource_exhausted(msg);
                if let Ok(v) = retry_after_ms.to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                status
            }
            AuthError::Forbidden(_) => Status::permission_denied(msg),
            AuthError::NoServiceClients => Status::failed_precondition(msg),
            AuthError::Sqlite(_) | AuthError::Internal(_) => Status::internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_codes() {
        let cases = [
            (AuthError::Invalid("x".into()), Code::InvalidArgument),
            (AuthError::BadCredentials, Code::Unauthenticated),
            (AuthError::EmailTaken, Code::AlreadyExists),
            (
                AuthError::RateLimited { retry_after_ms: 10 },
                Code::ResourceExhausted,
            ),
            (AuthError::Unauthenticated("revoked"), Code::Unauthenticated),
            (AuthError::Forbidden("x".into()), Code::PermissionDenied),
            (AuthError::NoServiceClients, Code::FailedPrecondition),
            (AuthError::Internal("x".into()), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        let s = Status::from(AuthError::RateLimited {
            retry_after_ms: 1500,
        });
        assert_eq!(
            s.metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("1500")
        );
    }
}
