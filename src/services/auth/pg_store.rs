//! Accounts, revocations and refresh-token rotations in PostgreSQL, shared
//! by every auth instance (`--database-url`). The same rows and rules as
//! the SQLite [`Store`](super::store::Store), plus what sharing needs:
//! - an email is unique by its key across instances: of two sign-ups
//!   racing for one address, the second insert waits for the first and
//!   then finds the key taken ([`AuthError::EmailTaken`]);
//! - a revocation made through one instance is seen by the next check on
//!   any other: nothing about revocations is cached in process;
//! - a refresh exchange is decided in one transaction (see
//!   [`Store::rotate`](super::store::Store::rotate)): inserting the
//!   token's revocation is the claim, so of two instances exchanging one
//!   token exactly one wins, and the loser, having waited for the winner's
//!   commit, sees its rotation record (a race, not a stolen copy).
//!
//! The log-in throttle's shared state is [`PgThrottle`]
//! (`pg_throttle.rs`); its tables come with migration 2.
//!
//! Keys compare as bytes (`COLLATE "C"`), as SQLite compares them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::Pool;

use super::error::AuthError;
use super::pg_throttle::PgThrottle;
use super::store::{Exchange, Rotation, User, raced};
use crate::pg::PgError;

/// The accounts' schema on PostgreSQL, one step per version: 1 the
/// accounts, revocations and rotations; 2 the shared log-in throttle.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE auth_users (
         id TEXT COLLATE \"C\" PRIMARY KEY,
         email_key TEXT COLLATE \"C\" NOT NULL UNIQUE,
         email TEXT NOT NULL,
         password_hash TEXT NOT NULL,
         display_name TEXT NOT NULL,
         created_at_ms BIGINT NOT NULL
     );
     CREATE TABLE auth_revoked_tokens (
         jti TEXT COLLATE \"C\" PRIMARY KEY,
         expires_at_ms BIGINT NOT NULL
     );
     CREATE INDEX auth_revoked_by_expiry ON auth_revoked_tokens (expires_at_ms);
     CREATE TABLE auth_rotations (
         jti TEXT COLLATE \"C\" PRIMARY KEY,
         rotated_at_ms BIGINT NOT NULL,
         expires_at_ms BIGINT NOT NULL
     );
     CREATE INDEX auth_rotations_by_expiry ON auth_rotations (expires_at_ms);",
    // The log-in throttle, shared by every instance (pg_throttle.rs).
    "CREATE TABLE auth_login_pairs (
         email_key TEXT COLLATE \"C\" NOT NULL,
         client TEXT COLLATE \"C\" NOT NULL,
         failures BIGINT NOT NULL,
         blocked_until_ms BIGINT NOT NULL,
         last_ms BIGINT NOT NULL,
         PRIMARY KEY (email_key, client)
     );
     CREATE INDEX auth_login_pairs_by_last ON auth_login_pairs (last_ms);
     CREATE TABLE auth_login_emails (
         email_key TEXT COLLATE \"C\" PRIMARY KEY,
         tokens DOUBLE PRECISION NOT NULL,
         at_ms BIGINT NOT NULL
     );
     CREATE INDEX auth_login_emails_by_at ON auth_login_emails (at_ms);",
];

/// Revocations inserted (by this instance) between sweeps of the expired
/// ones.
const SWEEP_EVERY: u64 = 256;

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn db(e: tokio_postgres::Error) -> AuthError {
    AuthError::Postgres(PgError::Db(e))
}

pub(super) fn pool_err(e: deadpool_postgres::PoolError) -> AuthError {
    AuthError::Postgres(PgError::Pool(e))
}

/// The accounts on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    revocations: Arc<AtomicU64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// The accounts on `pool`'s database, its schema brought up to date.
    ///
    /// # Errors
    /// [`AuthError::Schema`]: the database is unreachable, newer than this
    /// binary, or a migration failed.
    pub async fn open(pool: Pool) -> Result<Self, AuthError> {
        crate::pg::migrate(&pool, "auth", MIGRATIONS).await?;
        Ok(Self::unmigrated(pool))
    }

    /// The accounts on `pool` without touching the schema (for tests of a
    /// database that goes away).
    #[must_use]
    pub(super) fn unmigrated(pool: Pool) -> Self {
        Self {
            pool,
            revocations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The log-in throttle on the same database.
    #[must_use]
    pub fn throttle(&self) -> PgThrottle {
        PgThrottle::new(self.pool.clone())
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, AuthError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Inserts a new user under `key` ([`super::email::key`] of its email).
    ///
    /// # Errors
    /// [`AuthError::EmailTaken`] if the key has an account (on any
    /// instance); database failures.
    pub async fn create_user(&self, key: &str, u: &User) -> Result<(), AuthError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO auth_users
                     (id, email_key, email, password_hash, display_name, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (email_key) DO NOTHING",
                &[
                    &u.id,
                    &key,
                    &u.email,
                    &u.password_hash,
                    &u.display_name,
                    &to_i64(u.created_at_ms),
                ],
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            return Err(AuthError::EmailTaken);
        }
        Ok(())
    }

    /// The user whose email has `key`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn user_by_key(&self, key: &str) -> Result<Option<User>, AuthError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, email, password_hash, display_name, created_at_ms
                 FROM auth_users WHERE email_key = $1",
                &[&key],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|row| User {
            id: row.get(0),
            email: row.get(1),
            password_hash: row.get(2),
            display_name: row.get(3),
            created_at_ms: to_u64(row.get(4)),
        }))
    }

    /// True if user `id` exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn user_exists(&self, id: &str) -> Result<bool, AuthError> {
        let client = self.client().await?;
        Ok(client
            .query_opt("SELECT 1 FROM auth_users WHERE id = $1", &[&id])
            .await
            .map_err(db)?
            .is_some())
    }

    /// Puts `jti` on the revocation list until `expires_at_ms`; true if it
    /// was not on it. Expired entries are swept now and then.
    ///
    /// # Errors
    /// Database failures.
    pub async fn revoke(
        &self,
        jti: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, AuthError> {
        let client = self.client().await?;
        let added = insert_revocation(&**client, jti, expires_at_ms).await?;
        drop(client);
        self.counted_revocation(now_ms).await?;
        Ok(added)
    }

    async fn counted_revocation(&self, now_ms: u64) -> Result<(), AuthError> {
        let n = self.revocations.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now_ms).await?;
        }
        Ok(())
    }

    /// True if any of `keys` (a token id, a family key) is on the
    /// revocation list.
    ///
    /// # Errors
    /// Database failures.
    pub async fn any_revoked(&self, keys: &[&str]) -> Result<bool, AuthError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM auth_revoked_tokens WHERE jti = ANY($1))",
                &[&keys],
            )
            .await
            .map_err(db)?;
        Ok(row.get(0))
    }

    /// Decides the exchange of a refresh token in one transaction (see the
    /// module's notes).
    ///
    /// # Errors
    /// Database failures (nothing of the exchange stays).
    pub async fn rotate(&self, x: &Exchange) -> Result<Rotation, AuthError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        if let Some(family) = &x.family
            && tx
                .query_opt(
                    "SELECT 1 FROM auth_revoked_tokens WHERE jti = $1",
                    &[family],
                )
                .await
                .map_err(db)?
                .is_some()
        {
            return Ok(Rotation::FamilyRevoked);
        }
        let out = if insert_revocation(&*tx, &x.jti, x.expires_at_ms).await? {
            tx.execute(
                "INSERT INTO auth_rotations (jti, rotated_at_ms, expires_at_ms)
                 VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
                &[&x.jti, &to_i64(x.now_ms), &to_i64(x.expires_at_ms)],
            )
            .await
            .map_err(db)?;
            let exists = tx
                .query_opt("SELECT 1 FROM auth_users WHERE id = $1", &[&x.sub])
                .await
                .map_err(db)?
                .is_some();
            if exists {
                Rotation::Won
            } else {
                Rotation::NoUser
            }
        } else {
            let at: Option<i64> = tx
                .query_opt(
                    "SELECT rotated_at_ms FROM auth_rotations WHERE jti = $1",
                    &[&x.jti],
                )
                .await
                .map_err(db)?
                .map(|row| row.get(0));
            if raced(at.map(to_u64), x.now_ms) {
                Rotation::Raced
            } else {
                if let Some(family) = &x.family {
                    insert_revocation(&*tx, family, x.family_ends_ms).await?;
                }
                Rotation::Reused {
                    family_ended: x.family.is_some(),
                }
            }
        };
        tx.commit().await.map_err(db)?;
        drop(client);
        if !matches!(out, Rotation::Raced) {
            self.counted_revocation(x.now_ms).await?;
        }
        Ok(out)
    }

    /// Forgets revocations and rotations of tokens expired by `now_ms`;
    /// how many.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, AuthError> {
        let client = self.client().await?;
        let now = to_i64(now_ms);
        let revocations = client
            .execute(
                "DELETE FROM auth_revoked_tokens WHERE expires_at_ms <= $1",
                &[&now],
            )
            .await
            .map_err(db)?;
        let rotations = client
            .execute(
                "DELETE FROM auth_rotations WHERE expires_at_ms <= $1",
                &[&now],
            )
            .await
            .map_err(db)?;
        Ok(usize::try_from(revocations + rotations).unwrap_or(usize::MAX))
    }
}

async fn insert_revocation(
    client: &impl tokio_postgres::GenericClient,
    jti: &str,
    expires_at_ms: u64,
) -> Result<bool, AuthError> {
    Ok(client
        .execute(
            "INSERT INTO auth_revoked_tokens (jti, expires_at_ms) VALUES ($1, $2)
             ON CONFLICT (jti) DO NOTHING",
            &[&jti, &to_i64(expires_at_ms)],
        )
        .await
        .map_err(db)?
        == 1)
}
