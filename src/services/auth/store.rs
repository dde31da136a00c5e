//! Users and revoked token ids in SQLite (a file under the data dir, or in
//! memory). Emails are unique case-insensitively; revocations are kept
//! until the token would have expired anyway.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::error::AuthError;

/// A user account. `Debug` hides the password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Random hex id.
    pub id: String,
    /// The email as given at sign-up.
    pub email: String,
    /// The Argon2 PHC string.
    pub password_hash: String,
    /// Display name.
    pub display_name: String,
    /// Sign-up time, Unix ms.
    pub created_at_ms: u64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// The key an email is unique under.
#[must_use]
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Revocations inserted between sweeps of the expired ones.
const SWEEP_EVERY: u64 = 256;

/// The accounts and the revocation list.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    revocations: u64,
}

impl Store {
    /// Opens (creating) the store at `path`, or in memory for `None`.
    ///
    /// # Errors
    /// SQLite cannot open or migrate the file.
    pub fn open(path: Option<&Path>) -> Result<Self, AuthError> {
        let conn = crate::sqlite::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 id TEXT PRIMARY KEY,
                 email_key TEXT NOT NULL UNIQUE,
                 email TEXT NOT NULL,
                 password_hash TEXT NOT NULL,
                 display_name TEXT NOT NULL,
                 created_at_ms INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS revoked_tokens (
                 jti TEXT PRIMARY KEY,
                 expires_at_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS revoked_by_expiry ON revoked_tokens (expires_at_ms);
             CREATE TABLE IF NOT EXISTS rotations (
                 jti TEXT PRIMARY KEY,
                 rotated_at_ms INTEGER NOT NULL,
                 expires_at_ms INTEGER NOT NULL
             );",
        )?;
        Ok(Self {
            conn,
            revocations: 0,
        })
    }

    /// Inserts a new user.
    ///
    /// # Errors
    /// [`AuthError::EmailTaken`] if the email (any case) has an account.
    pub fn create_user(&mut self, u: &User) -> Result<(), AuthError> {
        let inserted = self.conn.execute(
            "INSERT INTO users (id, email_key, email, password_hash, display_name, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                u.id,
                email_key(&u.email),
                u.email,
                u.password_hash,
                u.display_name,
                to_i64(u.created_at_ms)
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            // The email's unique index only: another constraint (the
            // simulator's full disk refuses commits as one) is no answer.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation
                    && e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                Err(AuthError::EmailTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The user with `email` (any case).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, AuthError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, email, password_hash, display_name, created_at_ms
             FROM users WHERE email_key = ?1",
        )?;
        Ok(stmt
            .query_row([email_key(email)], |row| {
                Ok(User {
                    id: row.get(0)?,
                    email: row.get(1)?,
                    password_hash: row.get(2)?,
                    display_name: row.get(3)?,
                    created_at_ms: to_u64(row.get(4)?),
                })
            })
            .optional()?)
    }

    /// True if user `id` exists.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn user_exists(&self, id: &str) -> Result<bool, AuthError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
        Ok(stmt.query_row([id], |_| Ok(())).optional()?.is_some())
    }

    /// Puts `jti` on the revocation list until `expires_at_ms`; true if it
    /// was not on it. Expired entries are swept now and then (`now_ms`).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn revoke(
        &mut self,
        jti: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, AuthError> {
        let added = self.conn.execute(
            "INSERT OR IGNORE INTO revoked_tokens (jti, expires_at_ms) VALUES (?1, ?2)",
            params![jti, to_i64(expires_at_ms)],
        )? > 0;
        self.revocations += 1;
        if self.revocations.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now_ms)?;
        }
        Ok(added)
    }

    /// The revocation-list entry that ends a whole refresh family.
    #[must_use]
    pub fn family_key(fam: &str) -> String {
        format!("family:{fam}")
    }

    /// True if `jti` is on the revocation list.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn is_revoked(&self, jti: &str) -> Result<bool, AuthError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT 1 FROM revoked_tokens WHERE jti = ?1")?;
        Ok(stmt.query_row([jti], |_| Ok(())).optional()?.is_some())
    }

    /// Records that refresh token `jti` was exchanged at `at_ms` (kept
    /// until it expires).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn record_rotation(
        &mut self,
        jti: &str,
        at_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), AuthError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO rotations (jti, rotated_at_ms, expires_at_ms) VALUES (?1, ?2, ?3)",
            params![jti, to_i64(at_ms), to_i64(expires_at_ms)],
        )?;
        Ok(())
    }

    /// When refresh token `jti` was exchanged, if it was.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn rotated_at(&self, jti: &str) -> Result<Option<u64>, AuthError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rotated_at_ms FROM rotations WHERE jti = ?1")?;
        let at: Option<i64> = stmt.query_row([jti], |row| row.get(0)).optional()?;
        Ok(at.map(|ms| u64::try_from(ms).unwrap_or(0)))
    }

    /// Forgets revocations and rotations of tokens expired by `now_ms`;
    /// how many.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn sweep(&mut self, now_ms: u64) -> Result<usize, AuthError> {
        let revocations = self.conn.execute(
            "DELETE FROM revoked_tokens WHERE expires_at_ms <= ?1",
            [to_i64(now_ms)],
        )?;
        let rotations = self.conn.execute(
            "DELETE FROM rotations WHERE expires_at_ms <= ?1",
            [to_i64(now_ms)],
        )?;
        Ok(revocations + rotations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, email: &str) -> User {
        User {
            id: id.into(),
            email: email.into(),
            password_hash: "$argon2id$secret-hash".into(),
            display_name: "Ada".into(),
            created_at_ms: 5,
        }
    }

    #[test]
    fn emails_are_unique_in_any_case() {
        let mut s = Store::open(None).expect("open");
        s.create_user(&user("u1", "Ada@Example.com"))
            .expect("create");
        assert!(matches!(
            s.create_user(&user("u2", "ada@example.COM")),
            Err(AuthError::EmailTaken)
        ));
        let found = s
            .user_by_email("ADA@example.com")
            .expect("get")
            .expect("found");
        assert_eq!(found, user("u1", "Ada@Example.com"));
        assert!(s.user_by_email("bob@example.com").expect("get").is_none());
        assert!(s.user_exists("u1").expect("exists"));
        assert!(!format!("{found:?}").contains("secret-hash"));
    }

    #[test]
    fn revocations_last_until_expiry() {
        let mut s = Store::open(None).expect("open");
        assert!(s.revoke("j1", 100, 10).expect("revoke"));
        assert!(!s.revoke("j1", 100, 10).expect("again"), "idempotent");
        assert!(s.revoke("j2", 200, 10).expect("revoke"));
        assert!(s.is_revoked("j1").expect("check"));
        assert_eq!(s.sweep(150).expect("sweep"), 1);
        assert!(!s.is_revoked("j1").expect("check"));
        assert!(s.is_revoked("j2").expect("check"));
    }

    #[test]
    fn users_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("sg-auth-{}", crate::rt::random_hex128()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("auth.sqlite");
        let mut s = Store::open(Some(&path)).expect("open");
        s.create_user(&user("u1", "a@b.c")).expect("create");
        s.revoke("j", u64::MAX / 2, 0).expect("revoke");
        drop(s);
        let s = Store::open(Some(&path)).expect("reopen");
        assert!(s.user_by_email("a@b.c").expect("get").is_some());
        assert!(s.is_revoked("j").expect("check"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
