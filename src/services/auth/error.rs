//! The auth service's errors and their gRPC statuses. Messages never carry
//! a password, a token or a secret.

use tonic::Status;

use crate::error::{Classify, ErrorKind};

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
    #[error("auth store failed")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL (`--database-url`) failed or cannot be reached. The
    /// message is all a caller reads (when unreachable: UNAVAILABLE); the
    /// cause is logged.
    #[cfg(not(madsim))]
    #[error("the accounts database is unavailable; retry later")]
    Postgres(#[from] crate::pg::PgError),
    /// The simulator's modelled database node ([`remote`](super::remote))
    /// failed or cannot be reached; the cause is the source.
    #[error("the accounts database is unavailable; retry later")]
    Database(#[source] crate::registry::consul::PostError),
    /// The accounts' schema could not be brought up to date.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// Hashing a password failed (Argon2 refused its parameters: a bug).
    #[error("password hashing failed")]
    Hash(#[source] argon2::password_hash::Error),
    /// Signing a token failed (a bug or a broken secret, never the
    /// client's input).
    #[error("token signing failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Too many password hashes wait for their turn (a flood of sign-ups
    /// or log-ins): refused at once, to be retried.
    #[error("too many sign-ins at once; retry shortly")]
    Busy,
    /// A blocking task (store or hashing) ended without an answer (it
    /// panicked).
    #[error("auth task failed")]
    Task(#[from] crate::rt::JoinError),
}

impl Classify for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::BadCredentials | Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::EmailTaken => ErrorKind::AlreadyExists,
            Self::RateLimited { .. } | Self::Busy => ErrorKind::Exhausted,
            Self::Forbidden(_) => ErrorKind::PermissionDenied,
            Self::NoServiceClients => ErrorKind::Conflict,
            Self::Sqlite(e) => crate::sqlite::kind(e),
            Self::Database(_) => ErrorKind::Unavailable,
            #[cfg(not(madsim))]
            Self::Postgres(e) => e.kind(),
            Self::Schema(_) | Self::Hash(_) | Self::Sign(_) | Self::Task(_) => ErrorKind::Internal,
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let mut status = crate::error::status(&e);
        if let AuthError::RateLimited { retry_after_ms } = e
            && let Ok(v) = retry_after_ms.to_string().parse()
        {
            status.metadata_mut().insert("retry-after-ms", v);
        }
        status
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
            (
                AuthError::Sqlite(rusqlite::Error::InvalidQuery),
                Code::Internal,
            ),
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
