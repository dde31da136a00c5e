//! Video records in SQLite (a file under the data dir, or in memory), and
//! the ids of the events already applied, so redelivered events are no-ops.
//! The embedded back end of the [`Catalog`](super::catalog::Catalog); its
//! PostgreSQL twin is [`pg_store`](super::pg_store).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::state::{self, Step};
use crate::proto::{Rendition, Video, VideoState, Visibility};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A video with that id exists.
    #[error("video {0} already exists")]
    Exists(String),
    /// SQLite failed.
    #[error("metadata store failed")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row's renditions do not encode or decode.
    #[error("metadata store: corrupt renditions")]
    Corrupt(#[source] serde_json::Error),
    /// PostgreSQL failed or cannot be reached.
    #[cfg(not(madsim))]
    #[error("metadata database failed")]
    Postgres(#[from] crate::pg::PgError),
    /// The database node failed or could not be reached (the simulator's
    /// modelled database, [`remote`](super::remote)).
    #[error("metadata database unavailable")]
    Database(#[source] crate::registry::consul::PostError),
    /// The schema could not be brought up to date.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// A store task ended without an answer (it panicked).
    #[error("metadata store task failed")]
    Task(#[from] crate::rt::JoinError),
}

/// The catalog's schema, one step per version (SQLite; `pg_store` has the
/// PostgreSQL twin). Step 1 is the schema from before versions were
/// recorded, hence `IF NOT EXISTS`: such a file (at version 0) takes it as
/// it is.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS videos (
         id TEXT PRIMARY KEY,
         owner_id TEXT NOT NULL,
         title TEXT NOT NULL,
         description TEXT NOT NULL,
         content_type TEXT NOT NULL,
         size_bytes INTEGER NOT NULL,
         sha256_hex TEXT NOT NULL,
         state INTEGER NOT NULL,
         failure_reason TEXT NOT NULL,
         renditions TEXT NOT NULL,
         created_at_ms INTEGER NOT NULL,
         updated_at_ms INTEGER NOT NULL,
         duration_ms INTEGER NOT NULL,
         thumbnail_key TEXT NOT NULL
     );
     CREATE INDEX IF NOT EXISTS videos_newest ON videos (created_at_ms DESC, id DESC);
     CREATE TABLE IF NOT EXISTS applied_events (
         event_id TEXT PRIMARY KEY,
         at_ms INTEGER NOT NULL
     );",
    // Visibility (0, unspecified, reads as private) and the time a video
    // became ready: for a ready row of before, its last update (the best
    // guess there is, and stable from now on).
    "ALTER TABLE videos ADD COLUMN visibility INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE videos ADD COLUMN ready_at_ms INTEGER NOT NULL DEFAULT 0;
     UPDATE videos SET ready_at_ms = updated_at_ms WHERE state = 3;",
];

/// Which videos a listing returns (each `None`: no such condition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this owner's.
    pub owner: Option<String>,
    /// Only those in this state.
    pub state: Option<VideoState>,
    /// Only those this user may find listed: their own and public ones.
    pub viewer: Option<String>,
}

/// The stored value of [`Visibility::Public`], for the listing's filter.
pub(super) const PUBLIC: i32 = Visibility::Public as i32;

/// What an update did: `None`, no such video; `Some(Err)`, refused
/// (nothing stored); `Some(Ok)`, the video as stored and what the change
/// returned.
pub type Updated<T, E> = Option<Result<(Video, T), E>>;

/// Applied event ids older than this are forgotten (redelivery happens
/// within minutes; a week is ample).
pub const EVENT_MEMORY_MS: u64 = 7 * 24 * 3600 * 1000;

/// A rendition as both back ends store it (JSON in a text column).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredRendition {
    name: String,
    width: u32,
    height: u32,
    bitrate_kbps: u32,
    playlist_key: String,
}

impl From<&Rendition> for StoredRendition {
    fn from(r: &Rendition) -> Self {
        Self {
            name: r.name.clone(),
            width: r.width,
            height: r.height,
            bitrate_kbps: r.bitrate_kbps,
            playlist_key: r.playlist_key.clone(),
        }
    }
}

impl From<StoredRendition> for Rendition {
    fn from(r: StoredRendition) -> Self {
        Self {
            name: r.name,
            width: r.width,
            height: r.height,
            bitrate_kbps: r.bitrate_kbps,
            playlist_key: r.playlist_key,
        }
    }
}

/// The video catalog.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    applied: u64,
}

impl crate::sqlite::Db for Store {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

const COLUMNS: &str = "id, owner_id, title, description, content_type, size_bytes, sha256_hex, \
     state, failure_reason, renditions, created_at_ms, updated_at_ms, duration_ms, thumbnail_key, \
     visibility, ready_at_ms";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating) the catalog at `path`, or in memory for `None`.
    ///
    /// # Errors
    /// SQLite cannot open the file, or its schema cannot be brought up to
    /// date ([`StoreError::Schema`]).
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let mut conn = crate::sqlite::open(path)?;
        crate::sqlite::migrate(&mut conn, "metadata", MIGRATIONS)?;
        Ok(Self { conn, applied: 0 })
    }

    /// Inserts a new video.
    ///
    /// # Errors
    /// [`StoreError::Exists`] if the id is taken.
    pub fn create(&mut self, v: &Video) -> Result<(), StoreError> {
        let tx =
            crate::sqlite::transaction(&mut self.conn, rusqlite::TransactionBehavior::Deferred)?;
        let taken: bool = tx
            .query_row("SELECT 1 FROM videos WHERE id = ?1", [&v.id], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        if taken {
            return Err(StoreError::Exists(v.id.clone()));
        }
        write(&tx, v)?;
        tx.commit()?;
        Ok(())
    }

    /// The video `id`.
    ///
    /// # Errors
    /// SQLite failed or the row is corrupt.
    pub fn get(&self, id: &str) -> Result<Option<Video>, StoreError> {
        read_one(&self.conn, id)
    }

    /// Replaces the stored record of `v.id`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn put(&mut self, v: &Video) -> Result<(), StoreError> {
        write(&self.conn, v)
    }

    /// Changes video `id` by `f` in one transaction: `None` if there is
    /// no such video, `Some(Err)` (nothing stored) if `f` refuses.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn update<T, E>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut Video) -> Result<T, E>,
    ) -> Result<Updated<T, E>, StoreError> {
        let tx =
            crate::sqlite::transaction(&mut self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let Some(mut v) = read_one(&tx, id)? else {
            return Ok(None);
        };
        let out = match f(&mut v) {
            Ok(out) => out,
            Err(refused) => return Ok(Some(Err(refused))),
        };
        write(&tx, &v)?;
        tx.commit()?;
        Ok(Some(Ok((v, out))))
    }

    /// Removes `id`; true if it existed.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn delete(&mut self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM videos WHERE id = ?1", [id])?
            > 0)
    }

    /// Up to `limit` videos passing `filter`, newest first, after the
    /// `(created_at_ms, id)` cursor.
    ///
    /// # Errors
    /// SQLite failed or a row is corrupt.
    pub fn list(
        &self,
        filter: &Filter,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<Video>, StoreError> {
        let (at, id) = after.unwrap_or((i64::MAX, ""));
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM videos
             WHERE (?1 IS NULL OR owner_id = ?1) AND (?2 IS NULL OR state = ?2)
               AND (?6 IS NULL OR owner_id = ?6 OR visibility = ?7)
               AND (created_at_ms < ?3 OR (created_at_ms = ?3 AND (?4 = '' OR id < ?4)))
             ORDER BY created_at_ms DESC, id DESC LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![
                filter.owner,
                filter.state.map(|s| s as i32),
                at,
                id,
                limit,
                filter.viewer,
                PUBLIC
            ],
            row_to_video,
        )?;
        rows.map(|r| r.map_err(StoreError::from)?).collect()
    }

    /// Applies pipeline event `event_id` to video `id` once: returns the
    /// video after it, or `None` when the event was already applied, the
    /// video is unknown (deleted) or nothing changes.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn apply(
        &mut self,
        event_id: &str,
        id: &str,
        now_ms: u64,
        step: &Step,
        fill: impl FnOnce(&mut Video),
    ) -> Result<Option<Video>, StoreError> {
        let tx =
            crate::sqlite::transaction(&mut self.conn, rusqlite::TransactionBehavior::Deferred)?;
        let seen = tx.execute(
            "INSERT OR IGNORE INTO applied_events (event_id, at_ms) VALUES (?1, ?2)",
            params![event_id, to_i64(now_ms)],
        )? == 0;
        let mut changed = None;
        if !seen
            && let Some(mut v) = read_one(&tx, id)?
            && state::advance(&mut v, step, to_i64(now_ms), fill)
        {
            write(&tx, &v)?;
            changed = Some(v);
        }
        tx.commit()?;
        self.applied += 1;
        if self.applied.is_multiple_of(1000) {
            self.conn.execute(
                "DELETE FROM applied_events WHERE at_ms < ?1",
                [to_i64(now_ms.saturating_sub(EVENT_MEMORY_MS))],
            )?;
        }
        Ok(changed)
    }
}

impl Store {
    /// Whether event `event_id` was applied (for a database that runs
    /// [`apply`](Self::apply)'s steps in a transaction of its own: the
    /// simulator's modelled database node).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn applied(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM applied_events WHERE event_id = ?1",
                [event_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records event `event_id` as applied and, when `v` is given, stores
    /// it, in one transaction: the end of an [`apply`](Self::apply) whose
    /// step ran elsewhere. Recording an event twice changes nothing.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn commit_event(
        &mut self,
        event_id: &str,
        now_ms: u64,
        v: Option<&Video>,
    ) -> Result<(), StoreError> {
        let tx =
            crate::sqlite::transaction(&mut self.conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT OR IGNORE INTO applied_events (event_id, at_ms) VALUES (?1, ?2)",
            params![event_id, to_i64(now_ms)],
        )?;
        if let Some(v) = v {
            write(&tx, v)?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn write(conn: &Connection, v: &Video) -> Result<(), StoreError> {
    let renditions: Vec<StoredRendition> = v.renditions.iter().map(StoredRendition::from).collect();
    let renditions = serde_json::to_string(&renditions).map_err(StoreError::Corrupt)?;
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO videos ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
        ),
        params![
            v.id,
            v.owner_id,
            v.title,
            v.description,
            v.content_type,
            to_i64(v.size_bytes),
            v.sha256_hex,
            v.state,
            v.failure_reason,
            renditions,
            v.created_at_ms,
            v.updated_at_ms,
            to_i64(v.duration_ms),
            v.thumbnail_key,
            v.visibility,
            v.ready_at_ms,
        ],
    )?;
    Ok(())
}

fn read_one(conn: &Connection, id: &str) -> Result<Option<Video>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM videos WHERE id = ?1"))?;
    match stmt.query_row([id], row_to_video).optional()? {
        Some(v) => Ok(Some(v?)),
        None => Ok(None),
    }
}

fn row_to_video(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Video, StoreError>> {
    let renditions: String = row.get(9)?;
    let renditions = match serde_json::from_str::<Vec<StoredRendition>>(&renditions) {
        Ok(r) => r,
        Err(e) => return Ok(Err(StoreError::Corrupt(e))),
    };
    Ok(Ok(Video {
        id: row.get(0)?,
        owner_id: row.get(1)?,
        title: row.get(2)?,
        description: row.get(3)?,
        content_type: row.get(4)?,
        size_bytes: to_u64(row.get(5)?),
        sha256_hex: row.get(6)?,
        state: row.get(7)?,
        failure_reason: row.get(8)?,
        renditions: renditions.into_iter().map(Rendition::from).collect(),
        created_at_ms: row.get(10)?,
        updated_at_ms: row.get(11)?,
        duration_ms: to_u64(row.get(12)?),
        thumbnail_key: row.get(13)?,
        visibility: row.get(14)?,
        ready_at_ms: row.get(15)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(id: &str, at: i64) -> Video {
        Video {
            id: id.into(),
            owner_id: "u1".into(),
            title: "t".into(),
            content_type: "video/mp4".into(),
            size_bytes: 10,
            sha256_hex: "0".repeat(64),
            state: VideoState::Uploaded as i32,
            created_at_ms: at,
            updated_at_ms: at,
            ..Video::default()
        }
    }

    #[test]
    fn create_get_list_delete() {
        let mut s = Store::open(None).expect("open");
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            s.create(&video(id, 100 + i64::try_from(i).expect("small")))
                .expect("create");
        }
        assert!(matches!(
            s.create(&video("a", 1)),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(s.get("b").expect("get").expect("found").title, "t");
        let all = Filter::default();
        let page = s.list(&all, None, 2).expect("list");
        assert_eq!(
            page.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        let last = page.last().expect("two");
        let rest = s
            .list(&all, Some((last.created_at_ms, &last.id)), 2)
            .expect("list");
        assert_eq!(
            rest.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(s.delete("a").expect("delete"));
        assert!(!s.delete("a").expect("delete again"));
        assert!(s.get("a").expect("get").is_none());
    }

    #[test]
    fn an_event_applies_once() {
        let mut s = Store::open(None).expect("open");
        s.create(&video("v", 1)).expect("create");
        let fill = |v: &mut Video| v.duration_ms = 2000;
        let after = s
            .apply("e1", "v", 5, &Step::Completed, fill)
            .expect("apply");
        assert_eq!(after.expect("changed").state, VideoState::Ready as i32);
        assert!(
            s.apply("e1", "v", 6, &Step::Completed, fill)
                .expect("again")
                .is_none()
        );
        // A stale failure never undoes success.
        let stale = s
            .apply("e2", "v", 7, &Step::Failed("x".into()), fill)
            .expect("stale");
        assert!(stale.is_none());
        assert_eq!(s.get("v").expect("get").expect("v").duration_ms, 2000);
    }

    /// An acknowledged delete stays deleted when an earlier failure left
    /// the connection inside a transaction. Found by the swarm (seed
    /// 719335303): a failing disk interrupted a rollback, the next DELETE
    /// ran inside the stale transaction, answered 204, and the next
    /// event's transaction rolled it back: the video came back, and went
    /// on to be transcoded.
    #[tokio::test]
    async fn a_delete_after_a_transaction_left_open_stays_deleted() {
        let mut s = Store::open(None).expect("open");
        s.create(&video("v", 1)).expect("create");
        s.conn
            .execute_batch("BEGIN")
            .expect("a transaction left open");
        let catalog = crate::services::metadata::catalog::Catalog::sqlite(s);
        assert!(catalog.delete("v").await.expect("delete"));
        let applied = catalog
            .apply("e1".into(), "v".into(), 5, Step::Completed, |_| {})
            .await
            .expect("apply");
        assert!(applied.is_none(), "no video to apply the event to");
        assert!(
            catalog.get("v").await.expect("get").is_none(),
            "still deleted"
        );
    }

    #[test]
    fn records_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("sg-meta-{}", crate::rt::random_hex128()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("metadata.sqlite");
        Store::open(Some(&path))
            .expect("open")
            .create(&video("v", 1))
            .expect("create");
        assert!(
            Store::open(Some(&path))
                .expect("reopen")
                .get("v")
                .expect("get")
                .is_some()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
