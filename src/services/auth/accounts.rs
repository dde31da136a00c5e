//! The accounts, revocations and rotations on one of two back ends:
//! - SQLite ([`Store`]): a file under the data dir, or in memory. The
//!   monolith's and the simulator's; one instance per file. Its log-in
//!   throttle is in the instance's memory ([`MemoryThrottle`]).
//! - PostgreSQL ([`PgStore`], `--database-url`): shared by every auth
//!   instance, on any host, and so is its log-in throttle
//!   ([`PgThrottle`](super::pg_throttle::PgThrottle)).
//!
//! Both keep the same rules (the contract suite in `accounts/tests.rs`
//! runs on each): an email key has one account, a revocation is seen by
//! every instance's next check (no instance caches revocations), of two
//! exchanges of one refresh token exactly one wins.

use std::sync::{Arc, Mutex};

use super::error::AuthError;
use super::limit::{LoginThrottle, MemoryThrottle};
#[cfg(not(madsim))]
use super::pg_store::PgStore;
use super::remote::RemoteAccounts;
use super::store::{Exchange, Rotation, Store, User};

/// The accounts the server uses.
#[derive(Debug, Clone)]
pub enum Accounts {
    /// SQLite, used off the async workers.
    Sqlite(Arc<Mutex<Store>>),
    /// PostgreSQL.
    #[cfg(not(madsim))]
    Postgres(PgStore),
    /// A modelled database node (the simulator's stand-in for PostgreSQL),
    /// with the log-in throttle.
    Remote(RemoteAccounts),
}

impl From<Store> for Accounts {
    fn from(store: Store) -> Self {
        Self::Sqlite(Arc::new(Mutex::new(store)))
    }
}

#[cfg(not(madsim))]
impl From<PgStore> for Accounts {
    fn from(store: PgStore) -> Self {
        Self::Postgres(store)
    }
}

impl Accounts {
    /// The log-in throttle that goes with this back end: this instance's
    /// memory for SQLite, the shared database for PostgreSQL.
    #[must_use]
    pub fn throttle(&self) -> Arc<dyn LoginThrottle> {
        match self {
            Self::Sqlite(_) => Arc::new(MemoryThrottle::default()),
            #[cfg(not(madsim))]
            Self::Postgres(s) => Arc::new(s.throttle()),
            Self::Remote(s) => Arc::new(s.throttle()),
        }
    }

    /// Inserts a new user under `key` ([`super::email::key`] of its email).
    ///
    /// # Errors
    /// [`AuthError::EmailTaken`] if the key has an account; store failures.
    pub async fn create_user(&self, key: String, user: User) -> Result<(), AuthError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.create_user(&key, &user)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.create_user(&key, &user).await,
            Self::Remote(s) => s.create_user(key, user).await,
        }
    }

    /// The user whose email has `key`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_by_key(&self, key: String) -> Result<Option<User>, AuthError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.user_by_key(&key)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.user_by_key(&key).await,
            Self::Remote(s) => s.user_by_key(key).await,
        }
    }

    /// True if user `id` exists.
    ///
    /// # Errors
    /// Store failures.
    pub async fn user_exists(&self, id: String) -> Result<bool, AuthError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.user_exists(&id)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.user_exists(&id).await,
            Self::Remote(s) => s.user_exists(id).await,
        }
    }

    /// Puts `jti` on the revocation list until `expires_at_ms`; true if it
    /// was not on it.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke(
        &self,
        jti: String,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, AuthError> {
        match self {
            Self::Sqlite(s) => {
                crate::sqlite::with(s, move |s| s.revoke(&jti, expires_at_ms, now_ms)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.revoke(&jti, expires_at_ms, now_ms).await,
            Self::Remote(s) => s.revoke(jti, expires_at_ms, now_ms).await,
        }
    }

    /// True if token `jti`, or its family (`family`, a
    /// [`Store::family_key`]), is revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn is_revoked(&self, jti: String, family: Option<String>) -> Result<bool, AuthError> {
        match self {
            Self::Sqlite(s) => {
                crate::sqlite::with(s, move |s| {
                    Ok(s.is_revoked(&jti)?
                        || family.as_deref().map_or(Ok(false), |f| s.is_revoked(f))?)
                })
                .await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => {
                let mut keys = vec![jti.as_str()];
                keys.extend(family.as_deref());
                s.any_revoked(&keys).await
            }
            Self::Remote(s) => s.is_revoked(jti, family).await,
        }
    }

    /// Decides the exchange of a refresh token (see [`Store::rotate`]).
    ///
    /// # Errors
    /// Store failures (nothing of the exchange stays).
    pub async fn rotate(&self, x: Exchange) -> Result<Rotation, AuthError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.rotate(&x)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.rotate(&x).await,
            Self::Remote(s) => s.rotate(x).await,
        }
    }

    /// Forgets revocations and rotations of tokens expired by `now_ms`;
    /// how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, AuthError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.sweep(now_ms)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.sweep(now_ms).await,
            Self::Remote(s) => s.sweep(now_ms).await,
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests;
