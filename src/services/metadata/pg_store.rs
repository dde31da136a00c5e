//! Video records in PostgreSQL, shared by every metadata instance
//! (`--database-url`). The same rows and rules as the SQLite
//! [`Store`](super::store::Store), plus what sharing needs:
//! - an event is applied once across instances: its id is inserted into
//!   `metadata_applied_events` in the transaction that applies it, so a
//!   second instance handed the same event (a redelivery) blocks on the
//!   first one's row and then finds it there;
//! - a read-modify-write update holds the row's lock for its short
//!   transaction: two instances updating one video both land, one after
//!   the other, and neither overwrites the other's change unseen. Every
//!   write bumps the row's `row_version` (a write counter, for
//!   diagnostics and future conditional requests).
//!
//! Ids compare as bytes (`COLLATE "C"`), as SQLite compares them, so pages
//! come in the same order on both back ends.

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::state::{self, Step};
use super::store::{EVENT_MEMORY_MS, Filter, PUBLIC, StoreError, StoredRendition, Updated};
use crate::pg::PgError;
use crate::proto::{Rendition, Video};

/// The catalog's schema on PostgreSQL, one step per version.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE videos (
         id TEXT COLLATE \"C\" PRIMARY KEY,
         owner_id TEXT COLLATE \"C\" NOT NULL,
         title TEXT NOT NULL,
         description TEXT NOT NULL,
         content_type TEXT NOT NULL,
         size_bytes BIGINT NOT NULL,
         sha256_hex TEXT NOT NULL,
         state INTEGER NOT NULL,
         failure_reason TEXT NOT NULL,
         renditions TEXT NOT NULL,
         created_at_ms BIGINT NOT NULL,
         updated_at_ms BIGINT NOT NULL,
         duration_ms BIGINT NOT NULL,
         thumbnail_key TEXT NOT NULL
     );
     CREATE INDEX videos_newest ON videos (created_at_ms DESC, id DESC);
     CREATE TABLE metadata_applied_events (
         event_id TEXT PRIMARY KEY,
         at_ms BIGINT NOT NULL
     );",
    // A write counter per row.
    "ALTER TABLE videos ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
     CREATE INDEX metadata_applied_events_at ON metadata_applied_events (at_ms);",
    // Visibility (0, unspecified, reads as private) and the time a video
    // became ready: for a ready row of before, its last update (the best
    // guess there is, and stable from now on).
    "ALTER TABLE videos ADD COLUMN visibility INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE videos ADD COLUMN ready_at_ms BIGINT NOT NULL DEFAULT 0;
     UPDATE videos SET ready_at_ms = updated_at_ms WHERE state = 3;",
];

const COLUMNS: &str = "id, owner_id, title, description, content_type, size_bytes, sha256_hex, \
     state, failure_reason, renditions, created_at_ms, updated_at_ms, duration_ms, thumbnail_key, \
     visibility, ready_at_ms, row_version";

/// The catalog on PostgreSQL.
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

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Postgres(PgError::Pool(e))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PgStore {
    /// The catalog on `pool`'s database, its schema brought up to date.
    ///
    /// # Errors
    /// [`StoreError::Schema`]: the database is unreachable, newer than this
    /// binary, or a migration failed.
    pub async fn open(pool: Pool) -> Result<Self, StoreError> {
        crate::pg::migrate(&pool, "metadata", MIGRATIONS).await?;
        Ok(Self { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Inserts a new video.
    ///
    /// # Errors
    /// [`StoreError::Exists`] if the id is taken; database failures.
    pub async fn create(&self, v: &Video) -> Result<(), StoreError> {
        let client = self.client().await?;
        let values = Values::of(v)?;
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO videos ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &values.params(),
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            return Err(StoreError::Exists(v.id.clone()));
        }
        Ok(())
    }

    /// The video `id`.
    ///
    /// # Errors
    /// Database failures; a corrupt row.
    pub async fn get(&self, id: &str) -> Result<Option<Video>, StoreError> {
        let client = self.client().await?;
        Ok(read_one(&**client, id, "").await?.map(|(v, _)| v))
    }

    /// Changes video `id` by `f` in one transaction holding the row's
    /// lock (`SELECT ... FOR UPDATE`): a concurrent update of the same
    /// video, from this instance or another, waits for it and then sees
    /// its change. (Optimistic retries on the row version were tried first:
    /// with 16 writers on one row they ran out of attempts in most runs.)
    ///
    /// # Errors
    /// Database failures.
    pub async fn update<T, E>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Video) -> Result<T, E>,
    ) -> Result<Updated<T, E>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let Some((mut v, _)) = read_one(&*tx, id, " FOR UPDATE").await? else {
            return Ok(None);
        };
        let out = match f(&mut v) {
            Ok(out) => out,
            Err(refused) => return Ok(Some(Err(refused))),
        };
        let values = Values::of(&v)?;
        tx.execute(&format!("{UPDATE} WHERE id = $1"), &values.params())
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Ok((v, out))))
    }

    /// Removes `id`; true if it existed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute("DELETE FROM videos WHERE id = $1", &[&id])
            .await
            .map_err(db)?
            > 0)
    }

    /// Up to `limit` videos passing `filter`, newest first, after the
    /// `(created_at_ms, id)` cursor.
    ///
    /// # Errors
    /// Database failures; a corrupt row.
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Video>, StoreError> {
        let client = self.client().await?;
        let (at, id) = after.unwrap_or((i64::MAX, ""));
        let state = filter.state.map(|s| s as i32);
        let limit = i64::from(limit);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM videos
                     WHERE ($1::text IS NULL OR owner_id = $1)
                       AND ($2::integer IS NULL OR state = $2)
                       AND ($6::text IS NULL OR owner_id = $6 OR visibility = $7)
                       AND (created_at_ms < $3 OR (created_at_ms = $3 AND ($4 = '' OR id < $4)))
                     ORDER BY created_at_ms DESC, id DESC LIMIT $5"
                ),
                &[
                    &filter.owner,
                    &state,
                    &at,
                    &id,
                    &limit,
                    &filter.viewer,
                    &PUBLIC,
                ],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| row_to_video(r).map(|(v, _)| v))
            .collect()
    }

    /// Applies pipeline event `event_id` to video `id` once across every
    /// instance on this database (see [`Store::apply`](super::store::Store::apply)).
    ///
    /// # Errors
    /// Database failures.
    pub async fn apply(
        &self,
        event_id: &str,
        id: &str,
        now_ms: u64,
        step: &Step,
        fill: impl FnOnce(&mut Video),
    ) -> Result<Option<Video>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let now = to_i64(now_ms);
        let fresh = tx
            .execute(
                "INSERT INTO metadata_applied_events (event_id, at_ms) VALUES ($1, $2)
                 ON CONFLICT (event_id) DO NOTHING",
                &[&event_id, &now],
            )
            .await
            .map_err(db)?
            == 1;
        let mut changed = None;
        if fresh
            && let Some((mut v, _)) = read_one(&*tx, id, " FOR UPDATE").await?
            && state::advance(&mut v, step, now, fill)
        {
            let values = Values::of(&v)?;
            tx.execute(&format!("{UPDATE} WHERE id = $1"), &values.params())
                .await
                .map_err(db)?;
            changed = Some(v);
        }
        tx.commit().await.map_err(db)?;
        // Forget old event ids now and then (about one apply in a
        // thousand, whichever instance it is).
        if event_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
            % 1000
            == 0
        {
            client
                .execute(
                    "DELETE FROM metadata_applied_events WHERE at_ms < $1",
                    &[&to_i64(now_ms.saturating_sub(EVENT_MEMORY_MS))],
                )
                .await
                .map_err(db)?;
        }
        Ok(changed)
    }
}

/// Rewrites every column but the id and bumps the row version; callers
/// add the `WHERE`.
const UPDATE: &str = "UPDATE videos SET owner_id = $2, title = $3, description = $4,
     content_type = $5, size_bytes = $6, sha256_hex = $7, state = $8, failure_reason = $9,
     renditions = $10, created_at_ms = $11, updated_at_ms = $12, duration_ms = $13,
     thumbnail_key = $14, visibility = $15, ready_at_ms = $16, row_version = row_version + 1";

/// A video's column values as PostgreSQL takes them.
struct Values<'a> {
    v: &'a Video,
    size: i64,
    duration: i64,
    renditions: String,
}

impl<'a> Values<'a> {
    fn of(v: &'a Video) -> Result<Self, StoreError> {
        let renditions: Vec<StoredRendition> =
            v.renditions.iter().map(StoredRendition::from).collect();
        Ok(Self {
            v,
            size: to_i64(v.size_bytes),
            duration: to_i64(v.duration_ms),
            renditions: serde_json::to_string(&renditions).map_err(StoreError::Corrupt)?,
        })
    }

    /// The 16 columns in [`COLUMNS`] order, without the row version.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let v = self.v;
        vec![
            &v.id,
            &v.owner_id,
            &v.title,
            &v.description,
            &v.content_type,
            &self.size,
            &v.sha256_hex,
            &v.state,
            &v.failure_reason,
            &self.renditions,
            &v.created_at_ms,
            &v.updated_at_ms,
            &self.duration,
            &v.thumbnail_key,
            &v.visibility,
            &v.ready_at_ms,
        ]
    }
}

async fn read_one(
    client: &impl tokio_postgres::GenericClient,
    id: &str,
    lock: &str,
) -> Result<Option<(Video, i64)>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM videos WHERE id = $1{lock}"),
            &[&id],
        )
        .await
        .map_err(db)?;
    row.as_ref().map(row_to_video).transpose()
}

fn row_to_video(row: &Row) -> Result<(Video, i64), StoreError> {
    let renditions: String = row.get(9);
    let renditions: Vec<StoredRendition> =
        serde_json::from_str(&renditions).map_err(StoreError::Corrupt)?;
    Ok((
        Video {
            id: row.get(0),
            owner_id: row.get(1),
            title: row.get(2),
            description: row.get(3),
            content_type: row.get(4),
            size_bytes: to_u64(row.get(5)),
            sha256_hex: row.get(6),
            state: row.get(7),
            failure_reason: row.get(8),
            renditions: renditions.into_iter().map(Rendition::from).collect(),
            created_at_ms: row.get(10),
            updated_at_ms: row.get(11),
            duration_ms: to_u64(row.get(12)),
            thumbnail_key: row.get(13),
            visibility: row.get(14),
            ready_at_ms: row.get(15),
        },
        row.get(16),
    ))
}
