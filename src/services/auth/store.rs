//! Users and revoked token ids in SQLite (a file under the data dir, or in
//! memory). Emails are unique by their key ([`super::email::key`]);
//! revocations are kept until the token would have expired anyway.

use std::path::Path;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::email;
use super::error::AuthError;
use super::server::REUSE_GRACE_MS;

/// A user account. `Debug` hides the password hash.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The schema version (`PRAGMA user_version`) from which email keys are
/// [`email::key`] (before: trimmed and lower-cased only).
const KEYS_NORMALISED: i64 = 1;

/// The accounts' schema on SQLite, one step per version (`pg_store` has
/// the PostgreSQL twin). Step 1 is the schema from before versions were
/// counted this way, hence `IF NOT EXISTS`: a file at version 0 takes it
/// as it is (and has its email keys normalised, see [`Store::open`]).
pub const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS users (
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
     );"];

/// What [`Store::open`] did to the email keys of existing accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMigration {
    /// Accounts whose key changed to the new normalisation.
    pub rekeyed: usize,
    /// Accounts whose email the new rules refuse (invisible or mixed-script
    /// characters, a bad domain): their key is moved aside
    /// (`legacy:<id>`), so no spelling logs into them and the address is
    /// free for a new sign-up; their ids are logged.
    pub set_aside: Vec<String>,
    /// Accounts whose new key another account already has (a look-alike
    /// signed up before this rule): the older account keeps the key, these
    /// are moved aside like the refused ones.
    pub collided: Vec<String>,
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

impl crate::sqlite::Db for Store {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

impl Store {
    /// Opens (creating) the store at `path`, or in memory for `None`, its
    /// schema brought up to date ([`MIGRATIONS`] through
    /// [`crate::sqlite::migrate`]). A file at version 0 (from before
    /// versions were recorded) first gets the tables it lacks and its email
    /// keys normalised ([`Store::migrate_email_keys`], which records
    /// version 1 in the same transaction): version 1 is the tables *and*
    /// normalised keys.
    ///
    /// # Errors
    /// SQLite cannot open or migrate the file; [`AuthError::Schema`] for a
    /// file written by a newer binary or a failed migration.
    pub fn open(path: Option<&Path>) -> Result<Self, AuthError> {
        let conn = crate::sqlite::open(path)?;
        let mut store = Self {
            conn,
            revocations: 0,
        };
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version < KEYS_NORMALISED {
            store.conn.execute_batch(MIGRATIONS[0])?;
            let done = store.migrate_email_keys()?;
            if done != KeyMigration::default() {
                tracing::warn!(
                    rekeyed = done.rekeyed,
                    set_aside = ?done.set_aside,
                    collided = ?done.collided,
                    "auth store: email keys migrated to the normalised form; the accounts set aside cannot log in until an operator gives them a valid email"
                );
            }
        }
        crate::sqlite::migrate(&mut store.conn, "auth", MIGRATIONS)?;
        Ok(store)
    }

    /// Recomputes every account's email key with [`email::key`], in one
    /// transaction, and records the schema version (so it runs once).
    /// Accounts are visited oldest first, so of two that now share a key
    /// the first signed up keeps it.
    ///
    /// # Errors
    /// SQLite failed (nothing is changed then).
    pub fn migrate_email_keys(&mut self) -> Result<KeyMigration, AuthError> {
        let tx = self.conn.transaction()?;
        let mut done = KeyMigration::default();
        let rows: Vec<(String, String, String)> = tx
            .prepare("SELECT id, email_key, email FROM users ORDER BY created_at_ms, id")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        // Old keys first move aside, so a new key never meets a stale one.
        tx.execute("UPDATE users SET email_key = 'migrating:' || id", [])?;
        for (id, old, raw) in rows {
            let aside = format!("legacy:{id}");
            let new = match email::key(&raw) {
                Err(_) => {
                    done.set_aside.push(id.clone());
                    aside
                }
                Ok(k)
                    if tx
                        .prepare_cached("SELECT 1 FROM users WHERE email_key = ?1")?
                        .exists([&k])? =>
                {
                    done.collided.push(id.clone());
                    aside
                }
                Ok(k) => {
                    if k != old {
                        done.rekeyed += 1;
                    }
                    k
                }
            };
            tx.execute(
                "UPDATE users SET email_key = ?1 WHERE id = ?2",
                params![new, id],
            )?;
        }
        tx.pragma_update(None, "user_version", KEYS_NORMALISED)?;
        tx.commit()?;
        Ok(done)
    }

    /// Inserts a new user under `key` ([`email::key`] of its email).
    ///
    /// # Errors
    /// [`AuthError::EmailTaken`] if the key has an account.
    pub fn create_user(&mut self, key: &str, u: &User) -> Result<(), AuthError> {
        let inserted = self.conn.execute(
            "INSERT INTO users (id, email_key, email, password_hash, display_name, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                u.id,
                key,
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

    /// The user whose email has `key` ([`email::key`]).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn user_by_key(&self, key: &str) -> Result<Option<User>, AuthError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, email, password_hash, display_name, created_at_ms
             FROM users WHERE email_key = ?1",
        )?;
        Ok(stmt
            .query_row([key], |row| {
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
        user_exists(&self.conn, id)
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
        let added = insert_revocation(&self.conn, jti, expires_at_ms)?;
        self.counted_revocation(now_ms)?;
        Ok(added)
    }

    fn counted_revocation(&mut self, now_ms: u64) -> Result<(), AuthError> {
        self.revocations += 1;
        if self.revocations.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now_ms)?;
        }
        Ok(())
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
        is_revoked(&self.conn, jti)
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
        record_rotation(&self.conn, jti, at_ms, expires_at_ms)
    }

    /// When refresh token `jti` was exchanged, if it was.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn rotated_at(&self, jti: &str) -> Result<Option<u64>, AuthError> {
        rotated_at(&self.conn, jti)
    }

    /// Decides the exchange of a refresh token ([`Exchange`]) in one
    /// `IMMEDIATE` transaction, so that of two concurrent exchanges of
    /// one token (through this handle or another on the file) exactly one
    /// wins and the other sees its rotation record.
    ///
    /// # Errors
    /// SQLite failed (nothing of the exchange stays).
    pub fn rotate(&mut self, x: &Exchange) -> Result<Rotation, AuthError> {
        let tx =
            crate::sqlite::transaction(&mut self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let out = decide(&tx, x)?;
        tx.commit()?;
        if !matches!(out, Rotation::Raced | Rotation::FamilyRevoked) {
            self.counted_revocation(x.now_ms)?;
        }
        Ok(out)
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

/// A refresh token presented for exchange, as the store judges it
/// ([`Store::rotate`] and its PostgreSQL twin).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exchange {
    /// The token's id.
    pub jti: String,
    /// Its family's revocation-list key ([`Store::family_key`]); `None`
    /// for a token from before families.
    pub family: Option<String>,
    /// Its subject (the user id).
    pub sub: String,
    /// When it expires, Unix ms (its revocation is kept until then).
    pub expires_at_ms: u64,
    /// Now, Unix ms.
    pub now_ms: u64,
    /// Until when a family revocation is kept (the longest a family's
    /// newest token may live).
    pub family_ends_ms: u64,
}

/// How a refresh exchange went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rotation {
    /// The token was fresh: a new pair is issued.
    Won,
    /// The token was fresh but its user is gone.
    NoUser,
    /// Used again within [`REUSE_GRACE_MS`] of its exchange.
    Raced,
    /// Used again later, or after a revocation: its family (if it has
    /// one) is now revoked.
    Reused {
        /// A family was there to revoke.
        family_ended: bool,
    },
    /// Its family was revoked before.
    FamilyRevoked,
}

/// Whether a second use at `now_ms` of a refresh token exchanged at
/// `rotated_at_ms` is the same client racing itself (within
/// [`REUSE_GRACE_MS`]) rather than a copy.
pub(super) fn raced(rotated_at_ms: Option<u64>, now_ms: u64) -> bool {
    rotated_at_ms.is_some_and(|at| now_ms.saturating_sub(at) <= REUSE_GRACE_MS)
}

/// The rule of an exchange (the same on PostgreSQL): a revoked family
/// refuses; revoking the token is the claim on it (of two concurrent
/// exchanges exactly one inserts the revocation and wins); a second use
/// within the grace is a client racing itself; later, a copy: the family
/// ends.
fn decide(conn: &Connection, x: &Exchange) -> Result<Rotation, AuthError> {
    if let Some(family) = &x.family
        && is_revoked(conn, family)?
    {
        return Ok(Rotation::FamilyRevoked);
    }
    if insert_revocation(conn, &x.jti, x.expires_at_ms)? {
        record_rotation(conn, &x.jti, x.now_ms, x.expires_at_ms)?;
        return Ok(if user_exists(conn, &x.sub)? {
            Rotation::Won
        } else {
            Rotation::NoUser
        });
    }
    if raced(rotated_at(conn, &x.jti)?, x.now_ms) {
        return Ok(Rotation::Raced);
    }
    if let Some(family) = &x.family {
        insert_revocation(conn, family, x.family_ends_ms)?;
    }
    Ok(Rotation::Reused {
        family_ended: x.family.is_some(),
    })
}

fn insert_revocation(conn: &Connection, jti: &str, expires_at_ms: u64) -> Result<bool, AuthError> {
    Ok(conn
        .prepare_cached(
            "INSERT OR IGNORE INTO revoked_tokens (jti, expires_at_ms) VALUES (?1, ?2)",
        )?
        .execute(params![jti, to_i64(expires_at_ms)])?
        > 0)
}

fn is_revoked(conn: &Connection, jti: &str) -> Result<bool, AuthError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM revoked_tokens WHERE jti = ?1")?;
    Ok(stmt.query_row([jti], |_| Ok(())).optional()?.is_some())
}

fn user_exists(conn: &Connection, id: &str) -> Result<bool, AuthError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
    Ok(stmt.query_row([id], |_| Ok(())).optional()?.is_some())
}

fn record_rotation(
    conn: &Connection,
    jti: &str,
    at_ms: u64,
    expires_at_ms: u64,
) -> Result<(), AuthError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO rotations (jti, rotated_at_ms, expires_at_ms) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![jti, to_i64(at_ms), to_i64(expires_at_ms)])?;
    Ok(())
}

fn rotated_at(conn: &Connection, jti: &str) -> Result<Option<u64>, AuthError> {
    let mut stmt = conn.prepare_cached("SELECT rotated_at_ms FROM rotations WHERE jti = ?1")?;
    let at: Option<i64> = stmt.query_row([jti], |row| row.get(0)).optional()?;
    Ok(at.map(to_u64))
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

    fn key(email: &str) -> String {
        email::key(email).expect("a valid email")
    }

    #[test]
    fn emails_are_unique_by_key() {
        let mut s = Store::open(None).expect("open");
        s.create_user(&key("Ada@Example.com"), &user("u1", "Ada@Example.com"))
            .expect("create");
        assert!(matches!(
            s.create_user(&key("ada@example.COM"), &user("u2", "ada@example.COM")),
            Err(AuthError::EmailTaken)
        ));
        let found = s
            .user_by_key(&key("ADA@example.com"))
            .expect("get")
            .expect("found");
        assert_eq!(found, user("u1", "Ada@Example.com"));
        assert!(
            s.user_by_key(&key("bob@example.com"))
                .expect("get")
                .is_none()
        );
        assert!(s.user_exists("u1").expect("exists"));
        assert!(!format!("{found:?}").contains("secret-hash"));
    }

    /// A database written before keys were normalised: rows keyed
    /// `trim().to_lowercase()`, user_version 0.
    fn old_database(path: &Path, rows: &[(&str, &str, u64)]) {
        let conn = crate::sqlite::open(Some(path)).expect("open");
        conn.execute_batch(
            "CREATE TABLE users (id TEXT PRIMARY KEY, email_key TEXT NOT NULL UNIQUE,
                 email TEXT NOT NULL, password_hash TEXT NOT NULL,
                 display_name TEXT NOT NULL, created_at_ms INTEGER NOT NULL);",
        )
        .expect("schema");
        for (id, email, at) in rows {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, ?3, 'h', 'd', ?4)",
                params![id, email.trim().to_lowercase(), email, to_i64(*at)],
            )
            .expect("insert");
        }
    }

    #[test]
    fn old_keys_are_migrated_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("auth.sqlite");
        old_database(
            &path,
            &[
                ("plain", "Ada@Example.com", 1),
                ("wide", "ＢＯＢ@example.com", 2),
                ("zwsp", "ev\u{200B}e@example.com", 3),
                ("first", "kim@example.com", 4),
                ("twin", "ｋｉｍ@example.com", 5),
            ],
        );
        let mut s = Store::open(Some(&path)).expect("open migrates");
        let id_of = |s: &Store, email: &str| s.user_by_key(&key(email)).expect("get").map(|u| u.id);
        assert_eq!(
            id_of(&s, "ada@example.com").as_deref(),
            Some("plain"),
            "ASCII keys unchanged"
        );
        assert_eq!(
            id_of(&s, "bob@example.com").as_deref(),
            Some("wide"),
            "re-keyed"
        );
        assert_eq!(
            id_of(&s, "KIM@example.com").as_deref(),
            Some("first"),
            "the older keeps the key"
        );
        assert_eq!(
            id_of(&s, "eve@example.com"),
            None,
            "the refused one is set aside"
        );
        assert!(s.user_exists("zwsp").expect("kept") && s.user_exists("twin").expect("kept"));
        // The set-aside address is free; the migration does not run again.
        s.create_user(&key("eve@example.com"), &user("eve", "eve@example.com"))
            .expect("free");
        assert_eq!(s.migrate_email_keys().expect("again").rekeyed, 0);
        drop(s);
        let s = Store::open(Some(&path)).expect("reopen");
        assert_eq!(id_of(&s, "eve@example.com").as_deref(), Some("eve"));
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, KEYS_NORMALISED);
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
        s.create_user(&key("a@b.c"), &user("u1", "a@b.c"))
            .expect("create");
        s.revoke("j", u64::MAX / 2, 0).expect("revoke");
        drop(s);
        let s = Store::open(Some(&path)).expect("reopen");
        assert!(s.user_by_key(&key("a@b.c")).expect("get").is_some());
        assert!(s.is_revoked("j").expect("check"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
