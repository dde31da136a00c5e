//! Records of finished uploads in SQLite, keyed by upload id and by the
//! client's idempotency key (a retried upload returns the first result).
//! The embedded back end of [`Records`](super::records::Records); its
//! PostgreSQL twin is [`pg_store`](super::pg_store).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::proto::UploadInfo;

/// The upload records failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("upload records failed")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed or cannot be reached.
    #[cfg(not(madsim))]
    #[error("upload records database failed")]
    Postgres(#[from] crate::pg::PgError),
    /// The database node failed or could not be reached (the simulator's
    /// modelled database, [`remote`](super::remote)).
    #[error("upload database unavailable")]
    Database(#[source] crate::registry::consul::PostError),
    /// The schema could not be brought up to date.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// A store task ended without an answer (it panicked).
    #[error("upload records task failed")]
    Task(#[from] crate::rt::JoinError),
}

impl StoreError {
    /// How a caller should see it (see [`crate::sqlite::kind`] and
    /// [`crate::pg::PgError::kind`]).
    #[must_use]
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Sqlite(e) => crate::sqlite::kind(e),
            #[cfg(not(madsim))]
            Self::Postgres(e) => e.kind(),
            Self::Database(_) => crate::error::ErrorKind::Unavailable,
            Self::Schema(_) | Self::Task(_) => crate::error::ErrorKind::Internal,
        }
    }
}

/// The records' schema, one step per version (SQLite; `pg_store` has the
/// PostgreSQL twin). Step 1 is the schema from before versions were
/// recorded, hence `IF NOT EXISTS`: such a file (at version 0) takes it as
/// it is.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS uploads (
         upload_id TEXT PRIMARY KEY,
         video_id TEXT NOT NULL,
         owner_id TEXT NOT NULL,
         file_name TEXT NOT NULL,
         content_type TEXT NOT NULL,
         size_bytes INTEGER NOT NULL,
         sha256_hex TEXT NOT NULL,
         blob_key TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL,
         idempotency_key TEXT
     );
     CREATE UNIQUE INDEX IF NOT EXISTS uploads_key ON uploads (owner_id, idempotency_key);
     CREATE INDEX IF NOT EXISTS uploads_video ON uploads (video_id);
     CREATE INDEX IF NOT EXISTS uploads_newest ON uploads (owner_id, created_at_ms DESC, upload_id DESC);"];

/// The upload records.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl crate::sqlite::Db for Store {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

const COLUMNS: &str = "upload_id, video_id, owner_id, file_name, content_type, size_bytes, \
                       sha256_hex, blob_key, created_at_ms";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadInfo> {
    Ok(UploadInfo {
        upload_id: r.get(0)?,
        video_id: r.get(1)?,
        owner_id: r.get(2)?,
        file_name: r.get(3)?,
        content_type: r.get(4)?,
        size_bytes: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        sha256_hex: r.get(6)?,
        blob_key: r.get(7)?,
        created_at_ms: r.get(8)?,
    })
}

impl Store {
    /// Opens (creating) the records at `path`, or in memory for `None`.
    ///
    /// # Errors
    /// SQLite cannot open the file, or its schema cannot be brought up to
    /// date ([`StoreError::Schema`]).
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let mut conn = crate::sqlite::open(path)?;
        crate::sqlite::migrate(&mut conn, "upload", MIGRATIONS)?;
        Ok(Self { conn })
    }

    /// Records a finished upload (with the client's idempotency key, if any).
    ///
    /// # Errors
    /// SQLite failed (also when the key was taken meanwhile).
    pub fn insert(&mut self, u: &UploadInfo, key: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            &format!(
                "INSERT INTO uploads ({COLUMNS}, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ),
            params![
                u.upload_id,
                u.video_id,
                u.owner_id,
                u.file_name,
                u.content_type,
                i64::try_from(u.size_bytes).unwrap_or(i64::MAX),
                u.sha256_hex,
                u.blob_key,
                u.created_at_ms,
                key,
            ],
        )?;
        Ok(())
    }

    /// The upload `id`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn get(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM uploads WHERE upload_id = ?1");
        Ok(self.conn.query_row(&sql, [id], row).optional()?)
    }

    /// The upload `owner` made with idempotency key `key`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn by_key(&self, owner: &str, key: &str) -> Result<Option<UploadInfo>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM uploads WHERE owner_id = ?1 AND idempotency_key = ?2");
        Ok(self.conn.query_row(&sql, [owner, key], row).optional()?)
    }

    /// Removes upload `id`; true if it existed.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM uploads WHERE upload_id = ?1", [id])?
            > 0)
    }

    /// Removes the uploads of video `video_id`; how many.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn delete_video(&mut self, video_id: &str) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM uploads WHERE video_id = ?1", [video_id])?)
    }

    /// Up to `limit` uploads of `owner`, newest first, after the
    /// `(created_at_ms, upload_id)` cursor.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn list(
        &self,
        owner: &str,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<UploadInfo>, StoreError> {
        let (at, id) = after.unwrap_or((i64::MAX, ""));
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM uploads WHERE owner_id = ?1
               AND (created_at_ms < ?2 OR (created_at_ms = ?2 AND (?3 = '' OR upload_id < ?3)))
             ORDER BY created_at_ms DESC, upload_id DESC LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![owner, at, id, limit], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
