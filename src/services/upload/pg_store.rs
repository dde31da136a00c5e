//! Upload records in PostgreSQL, shared by every upload instance
//! (`--database-url`): the same rows and rules as the SQLite
//! [`Store`](super::store::Store). The idempotency key is unique per owner
//! across instances (a unique index), so a retried upload that reaches
//! another instance finds the first one's record.

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::store::StoreError;
use crate::pg::PgError;
use crate::proto::UploadInfo;

/// The records' schema on PostgreSQL, one step per version.
pub const MIGRATIONS: &[&str] = &["CREATE TABLE uploads (
         upload_id TEXT COLLATE \"C\" PRIMARY KEY,
         video_id TEXT NOT NULL,
         owner_id TEXT COLLATE \"C\" NOT NULL,
         file_name TEXT NOT NULL,
         content_type TEXT NOT NULL,
         size_bytes BIGINT NOT NULL,
         sha256_hex TEXT NOT NULL,
         blob_key TEXT NOT NULL,
         created_at_ms BIGINT NOT NULL,
         idempotency_key TEXT
     );
     CREATE UNIQUE INDEX uploads_key ON uploads (owner_id, idempotency_key);
     CREATE INDEX uploads_video ON uploads (video_id);
     CREATE INDEX uploads_newest ON uploads (owner_id, created_at_ms DESC, upload_id DESC);"];

const COLUMNS: &str = "upload_id, video_id, owner_id, file_name, content_type, size_bytes, \
                       sha256_hex, blob_key, created_at_ms";

/// The upload records on PostgreSQL.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(PgError::Db(e))
}

fn row(r: &Row) -> UploadInfo {
    UploadInfo {
        upload_id: r.get(0),
        video_id: r.get(1),
        owner_id: r.get(2),
        file_name: r.get(3),
        content_type: r.get(4),
        size_bytes: u64::try_from(r.get::<_, i64>(5)).unwrap_or(0),
        sha256_hex: r.get(6),
        blob_key: r.get(7),
        created_at_ms: r.get(8),
    }
}

impl PgStore {
    /// The records on `pool`'s database, the schema brought up to date.
    ///
    /// # Errors
    /// [`StoreError::Schema`]: the database is unreachable, newer than this
    /// binary, or a migration failed.
    pub async fn open(pool: Pool) -> Result<Self, StoreError> {
        crate::pg::migrate(&pool, "upload", MIGRATIONS).await?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Postgres(PgError::Pool(e)))
    }

    /// Records a finished upload (with the client's idempotency key).
    ///
    /// # Errors
    /// Database failures (also when the key was taken meanwhile).
    pub async fn insert(&self, u: &UploadInfo, key: Option<&str>) -> Result<(), StoreError> {
        let size = i64::try_from(u.size_bytes).unwrap_or(i64::MAX);
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO uploads ({COLUMNS}, idempotency_key)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &u.upload_id,
                    &u.video_id,
                    &u.owner_id,
                    &u.file_name,
                    &u.content_type,
                    &size,
                    &u.sha256_hex,
                    &u.blob_key,
                    &u.created_at_ms,
                    &key,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// The upload `id`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn get(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM uploads WHERE upload_id = $1");
        let found = self.client().await?.query_opt(&sql, &[&id]).await;
        Ok(found.map_err(db)?.as_ref().map(row))
    }

    /// The upload `owner` made with idempotency key `key`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn by_key(&self, owner: &str, key: &str) -> Result<Option<UploadInfo>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM uploads WHERE owner_id = $1 AND idempotency_key = $2");
        let found = self.client().await?.query_opt(&sql, &[&owner, &key]).await;
        Ok(found.map_err(db)?.as_ref().map(row))
    }

    /// Removes upload `id`; true if it existed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM uploads WHERE upload_id = $1", &[&id])
            .await
            .map_err(db)?;
        Ok(n > 0)
    }

    /// Removes the uploads of video `video_id`; how many.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete_video(&self, video_id: &str) -> Result<usize, StoreError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM uploads WHERE video_id = $1", &[&video_id])
            .await
            .map_err(db)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Up to `limit` uploads of `owner`, newest first, after the
    /// `(created_at_ms, upload_id)` cursor.
    ///
    /// # Errors
    /// Database failures.
    pub async fn list(
        &self,
        owner: &str,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<UploadInfo>, StoreError> {
        let (at, id) = after.unwrap_or((i64::MAX, ""));
        let limit = i64::from(limit);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM uploads WHERE owner_id = $1
                       AND (created_at_ms < $2 OR (created_at_ms = $2 AND ($3 = '' OR upload_id < $3)))
                     ORDER BY created_at_ms DESC, upload_id DESC LIMIT $4"
                ),
                &[&owner, &at, &id, &limit],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(row).collect())
    }
}
