//! The log-in throttle of [`super::limit`] with its state in PostgreSQL,
//! so every auth instance on the database enforces one lock-out: failures
//! of an (email, client address) pair counted through one instance block
//! the pair on all of them, and the per-email bucket is one bucket.
//!
//! The same rules and constants as the in-memory [`Lockout`](super::limit::Lockout):
//! [`FREE_FAILURES`] free failures, then waits from [`BACKOFF`]'s initial
//! delay doubling to its maximum; a success clears the pair and gives the
//! email's token back. Each step is one atomic statement
//! (`INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING`): two
//! instances counting one pair at once both count, and an attempt racing
//! the one that blocks the pair is refused.
//!
//! Time is the instance's wall clock (Unix ms, `rt::unix_ms`), so hosts'
//! clocks should agree to well under the first wait (1 s); a clock behind
//! never moves a stored time backwards.
//!
//! Bounded: every [`SWEEP_EVERY`] admissions an instance deletes the rows
//! whose state no longer changes anything (a pair idle past the longest
//! wait, an email whose bucket has refilled), and beyond [`MAX_ROWS`] per
//! table the least recently used ones, as the in-memory throttle evicts.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use super::error::AuthError;
use super::limit::{
    Attempt, BACKOFF, EMAIL_BURST, EMAIL_PER_SEC, FREE_FAILURES, LoginThrottle, Outcome, client_key,
};
use super::pg_store::{db, pool_err, to_i64};
use crate::rt;

/// Admissions (per instance) between sweeps of the rows that no longer
/// matter.
pub const SWEEP_EVERY: u64 = 256;
/// Most pairs, and most emails, kept in the database.
pub const MAX_ROWS: i64 = 1_000_000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// After this long without attempts a pair's block has ended.
fn pair_idle_ms() -> i64 {
    ms(BACKOFF.max)
}

/// After this long an email's bucket is full again.
fn email_refill_ms() -> i64 {
    ms(Duration::from_secs_f64(
        f64::from(EMAIL_BURST) / EMAIL_PER_SEC,
    ))
}

/// The client column: the address's key ([`client_key`]), or empty.
fn client_column(client: Option<IpAddr>) -> String {
    client_key(client)
        .map(|ip| ip.to_string())
        .unwrap_or_default()
}

/// Tokens in an email's bucket at `$3` (ms), refilled at `$4` per second up
/// to `$2`.
const REFILLED: &str =
    "LEAST($2::float8, e.tokens + GREATEST(0, $3::bigint - e.at_ms)::float8 / 1000.0 * $4::float8)";

/// The shared log-in throttle.
#[derive(Clone)]
pub struct PgThrottle {
    pool: Pool,
    admitted: Arc<AtomicU64>,
    max_rows: i64,
}

impl std::fmt::Debug for PgThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgThrottle").finish_non_exhaustive()
    }
}

impl PgThrottle {
    /// The throttle on `pool`'s database (its tables made by the accounts'
    /// migrations, [`super::pg_store::MIGRATIONS`]).
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            admitted: Arc::new(AtomicU64::new(0)),
            max_rows: MAX_ROWS,
        }
    }

    /// The same throttle keeping at most `max_rows` rows per table (at
    /// least 1).
    #[must_use]
    pub fn with_max_rows(mut self, max_rows: i64) -> Self {
        self.max_rows = max_rows.max(1);
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, AuthError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// [`LoginThrottle::admit`] at `now_ms`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn admit_at(
        &self,
        attempt: Attempt<'_>,
        now_ms: u64,
    ) -> Result<Result<(), Duration>, AuthError> {
        let client = self.client().await?;
        let (email, who, now) = (attempt.email, client_column(attempt.client), to_i64(now_ms));
        let wait = |until: i64| Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
        // The pair first: a blocked pair costs the email no token.
        let blocked: Option<i64> = client
            .query_opt(
                "UPDATE auth_login_pairs SET last_ms = GREATEST(last_ms, $3)
                 WHERE email_key = $1 AND client = $2 RETURNING blocked_until_ms",
                &[&email, &who, &now],
            )
            .await
            .map_err(db)?
            .map(|row| row.get(0));
        if let Some(until) = blocked
            && until > now
        {
            return Ok(Err(wait(until)));
        }
        // Then a token of the email's bucket.
        let burst = f64::from(EMAIL_BURST);
        let taken = client
            .query_opt(
                &format!(
                    "INSERT INTO auth_login_emails AS e (email_key, tokens, at_ms)
                     VALUES ($1, $2::float8 - 1, $3)
                     ON CONFLICT (email_key) DO UPDATE
                         SET tokens = {REFILLED} - 1, at_ms = GREATEST(e.at_ms, $3)
                         WHERE {REFILLED} >= 1
                     RETURNING tokens"
                ),
                &[&email, &burst, &now, &EMAIL_PER_SEC],
            )
            .await
            .map_err(db)?;
        if taken.is_none() {
            let tokens: f64 = client
                .query_opt(
                    &format!("SELECT {REFILLED} FROM auth_login_emails e WHERE email_key = $1"),
                    &[&email, &burst, &now, &EMAIL_PER_SEC],
                )
                .await
                .map_err(db)?
                .map_or(0.0, |row| row.get(0));
            let secs = ((1.0 - tokens) / EMAIL_PER_SEC).max(0.001);
            return Ok(Err(Duration::from_secs_f64(secs)));
        }
        // Then the pair counts the attempt (as failed until settled),
        // unless another attempt blocked it meanwhile.
        let initial = ms(BACKOFF.initial);
        let counted = client
            .query_opt(
                "INSERT INTO auth_login_pairs AS p
                     (email_key, client, failures, blocked_until_ms, last_ms)
                 VALUES ($1, $2, 1,
                     $3::bigint + CASE WHEN 1 >= $4::bigint THEN $5::bigint ELSE 0 END, $3::bigint)
                 ON CONFLICT (email_key, client) DO UPDATE SET
                     failures = LEAST(p.failures + 1, 2147483647),
                     blocked_until_ms = CASE WHEN p.failures + 1 >= $4::bigint
                         THEN $3::bigint + LEAST($6::float8, $5::bigint::float8
                             * power($7::float8, LEAST(p.failures + 1 - $4::bigint, 64)))::bigint
                         ELSE p.blocked_until_ms END,
                     last_ms = GREATEST(p.last_ms, $3::bigint)
                 WHERE p.blocked_until_ms <= $3::bigint
                 RETURNING failures",
                &[
                    &email,
                    &who,
                    &now,
                    &i64::from(FREE_FAILURES),
                    &initial,
                    &(BACKOFF.max.as_secs_f64() * 1000.0),
                    &BACKOFF.multiplier.max(1.0),
                ],
            )
            .await
            .map_err(db)?;
        if counted.is_none() {
            // Blocked by a concurrent attempt: this one did not count.
            client
                .execute(
                    "UPDATE auth_login_emails SET tokens = LEAST($2::float8, tokens + 1)
                     WHERE email_key = $1",
                    &[&email, &burst],
                )
                .await
                .map_err(db)?;
            let until: i64 = client
                .query_opt(
                    "SELECT blocked_until_ms FROM auth_login_pairs
                     WHERE email_key = $1 AND client = $2",
                    &[&email, &who],
                )
                .await
                .map_err(db)?
                .map_or(now, |row| row.get(0));
            return Ok(Err(wait(until).max(Duration::from_millis(1))));
        }
        drop(client);
        if (self.admitted.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(SWEEP_EVERY) {
            self.sweep(now_ms).await?;
        }
        Ok(Ok(()))
    }

    /// [`LoginThrottle::settle`]: a success clears the pair and gives the
    /// email's token back.
    ///
    /// # Errors
    /// Database failures.
    pub async fn settle_now(
        &self,
        attempt: Attempt<'_>,
        outcome: Outcome,
    ) -> Result<(), AuthError> {
        if outcome != Outcome::Success {
            return Ok(());
        }
        let client = self.client().await?;
        let who = client_column(attempt.client);
        client
            .execute(
                "DELETE FROM auth_login_pairs WHERE email_key = $1 AND client = $2",
                &[&attempt.email, &who],
            )
            .await
            .map_err(db)?;
        client
            .execute(
                "UPDATE auth_login_emails SET tokens = LEAST($2::float8, tokens + 1)
                 WHERE email_key = $1",
                &[&attempt.email, &f64::from(EMAIL_BURST)],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The wait a new attempt of `attempt` would get at `now_ms` from its
    /// pair, without counting it (for tests and status).
    ///
    /// # Errors
    /// Database failures.
    pub async fn blocked_for(
        &self,
        attempt: Attempt<'_>,
        now_ms: u64,
    ) -> Result<Duration, AuthError> {
        let client = self.client().await?;
        let until: Option<i64> = client
            .query_opt(
                "SELECT blocked_until_ms FROM auth_login_pairs WHERE email_key = $1 AND client = $2",
                &[&attempt.email, &client_column(attempt.client)],
            )
            .await
            .map_err(db)?
            .map(|row| row.get(0));
        let now = to_i64(now_ms);
        Ok(until.map_or(Duration::ZERO, |u| {
            Duration::from_millis(u64::try_from(u - now).unwrap_or(0))
        }))
    }

    /// Deletes the rows that change nothing any more at `now_ms`, then the
    /// least recently used beyond the table's bound; how many.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sweep(&self, now_ms: u64) -> Result<u64, AuthError> {
        let client = self.client().await?;
        let now = to_i64(now_ms);
        let mut gone = client
            .execute(
                "DELETE FROM auth_login_pairs
                 WHERE GREATEST(blocked_until_ms, last_ms) < $1::bigint - $2::bigint",
                &[&now, &pair_idle_ms()],
            )
            .await
            .map_err(db)?;
        gone += client
            .execute(
                "DELETE FROM auth_login_emails WHERE at_ms < $1::bigint - $2::bigint",
                &[&now, &email_refill_ms()],
            )
            .await
            .map_err(db)?;
        gone += client
            .execute(
                "DELETE FROM auth_login_pairs WHERE (email_key, client) IN (
                     SELECT email_key, client FROM auth_login_pairs
                     ORDER BY last_ms DESC OFFSET $1)",
                &[&self.max_rows],
            )
            .await
            .map_err(db)?;
        gone += client
            .execute(
                "DELETE FROM auth_login_emails WHERE email_key IN (
                     SELECT email_key FROM auth_login_emails
                     ORDER BY at_ms DESC OFFSET $1)",
                &[&self.max_rows],
            )
            .await
            .map_err(db)?;
        Ok(gone)
    }

    /// Pairs and emails in the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn len(&self) -> Result<(i64, i64), AuthError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM auth_login_pairs),
                        (SELECT count(*) FROM auth_login_emails)",
                &[],
            )
            .await
            .map_err(db)?;
        Ok((row.get(0), row.get(1)))
    }
}

#[async_trait]
impl LoginThrottle for PgThrottle {
    async fn admit(&self, attempt: Attempt<'_>) -> Result<Result<(), Duration>, AuthError> {
        self.admit_at(attempt, rt::unix_ms()).await
    }

    async fn settle(&self, attempt: Attempt<'_>, outcome: Outcome) -> Result<(), AuthError> {
        self.settle_now(attempt, outcome).await
    }
}
