//! Schema versions of the stores, the same rule on both back ends: each
//! component (metadata, auth, upload, ...) has a list of forward
//! migrations; the database records how many have run (SQLite in its
//! `user_version`, PostgreSQL in the `streamgate_schema` table), and at
//! start the ones not yet run are applied in one transaction under a lock,
//! so two instances starting together migrate once. A database that has
//! run more migrations than the binary knows was written by a newer
//! binary: it is refused, never guessed at.

/// A transaction left idle this long (its process killed or cut off
/// between its statements) is rolled back by the shared database, freeing
/// its row locks: PostgreSQL's `idle_in_transaction_session_timeout`, set
/// by `crate::pg`, and the simulator's modelled database alike.
pub const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(5);
/// A row lock waited for this long fails the waiting call as unavailable
/// (PostgreSQL's `lock_timeout`; the model's too).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a shared database is (`--database-url`): a `postgres://` URL or
/// a libpq `key=value` string. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps `url`.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL, password included: only for connecting.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&crate::text::redact_password(&self.0))
            .finish()
    }
}

/// Why a store's schema could not be brought up to date. The process stops
/// with exit code 2 on any of these (`KernelError::is_config`): it cannot
/// run as configured, and restarting it will not help.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database is at a version this binary does not know.
    #[error(
        "the {component} database is at schema version {found}, newer than this binary's {known}: \
         run a binary at least as new as the one that migrated it"
    )]
    TooNew {
        /// Whose schema.
        component: &'static str,
        /// The version recorded in the database.
        found: i64,
        /// The newest version this binary has.
        known: usize,
    },
    /// A migration failed (nothing of it stays: it ran in a transaction).
    #[error("the {component} database: migration to schema version {version} failed")]
    Failed {
        /// Whose schema.
        component: &'static str,
        /// The version it was migrating to.
        version: usize,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The version could not be read or recorded, or the lock not taken.
    #[error("the {component} database: cannot read or record its schema version")]
    Version {
        /// Whose schema.
        component: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What [`plan`] decides for a database at `found` with `known`
/// migrations: the range of migrations (0-based indexes) still to run.
///
/// # Errors
/// [`SchemaError::TooNew`] if `found > known`.
pub fn plan(
    component: &'static str,
    found: i64,
    known: usize,
) -> Result<std::ops::Range<usize>, SchemaError> {
    let done = usize::try_from(found).unwrap_or(0);
    if done > known {
        return Err(SchemaError::TooNew {
            component,
            found,
            known,
        });
    }
    Ok(done..known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_database_is_refused_and_an_older_one_runs_the_rest() {
        assert_eq!(plan("metadata", 0, 2).expect("fresh"), 0..2);
        assert_eq!(plan("metadata", 1, 2).expect("older"), 1..2);
        assert_eq!(plan("metadata", 2, 2).expect("current"), 2..2);
        let e = plan("metadata", 3, 2).expect_err("newer");
        assert!(
            e.to_string()
                .contains("schema version 3, newer than this binary's 2"),
            "{e}"
        );
    }
}
