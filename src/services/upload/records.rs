//! The upload records on one of two back ends:
//! - SQLite ([`Store`]): a file under the data dir, or in memory. The
//!   monolith's and the simulator's; one instance per file.
//! - PostgreSQL ([`PgStore`], `--database-url`): shared by every upload
//!   instance, on any host.
//!
//! Both keep the same rules (the contract suite in `records/tests.rs` runs
//! on each).

use std::sync::{Arc, Mutex};

#[cfg(not(madsim))]
use super::pg_store::PgStore;
use super::remote::RemoteRecords;
use super::store::{Store, StoreError};
use crate::proto::UploadInfo;

/// The records the server, the sweep and the event consumer share.
#[derive(Debug, Clone)]
pub enum Records {
    /// SQLite, used off the async workers.
    Sqlite(Arc<Mutex<Store>>),
    /// PostgreSQL.
    #[cfg(not(madsim))]
    Postgres(PgStore),
    /// A modelled database node (the simulator's stand-in for PostgreSQL).
    Remote(RemoteRecords),
}

impl Records {
    /// The SQLite records `store`.
    #[must_use]
    pub fn sqlite(store: Store) -> Self {
        Self::Sqlite(Arc::new(Mutex::new(store)))
    }

    /// Records a finished upload (with the client's idempotency key, if
    /// any).
    ///
    /// # Errors
    /// Store failures (also when the key was taken meanwhile).
    pub async fn insert(&self, u: UploadInfo, key: Option<String>) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.insert(&u, key.as_deref())).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.insert(&u, key.as_deref()).await,
            Self::Remote(s) => s.insert(u, key).await,
        }
    }

    /// The upload `id`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn get(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let id = id.to_owned();
                crate::sqlite::with(s, move |s| s.get(&id)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.get(id).await,
            Self::Remote(s) => s.get(id).await,
        }
    }

    /// The upload `owner` made with idempotency key `key`.
    ///
    /// # Errors
    /// Store failures.
    pub async fn by_key(&self, owner: &str, key: &str) -> Result<Option<UploadInfo>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let (owner, key) = (owner.to_owned(), key.to_owned());
                crate::sqlite::with(s, move |s| s.by_key(&owner, &key)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.by_key(owner, key).await,
            Self::Remote(s) => s.by_key(owner, key).await,
        }
    }

    /// Removes upload `id`; true if it existed.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let id = id.to_owned();
                crate::sqlite::with(s, move |s| s.delete(&id)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.delete(id).await,
            Self::Remote(s) => s.delete(id).await,
        }
    }

    /// Removes the uploads of video `video_id`; how many.
    ///
    /// # Errors
    /// Store failures.
    pub async fn delete_video(&self, video_id: &str) -> Result<usize, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let id = video_id.to_owned();
                crate::sqlite::with(s, move |s| s.delete_video(&id)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.delete_video(video_id).await,
            Self::Remote(s) => s.delete_video(video_id).await,
        }
    }

    /// Up to `limit` uploads of `owner`, newest first, after the
    /// `(created_at_ms, upload_id)` cursor.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list(
        &self,
        owner: String,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UploadInfo>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                crate::sqlite::with(s, move |s| {
                    s.list(&owner, after.as_ref().map(|(a, i)| (*a, i.as_str())), limit)
                })
                .await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => {
                s.list(&owner, after.as_ref().map(|(a, i)| (*a, i.as_str())), limit)
                    .await
            }
            Self::Remote(s) => s.list(owner, after, limit).await,
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests;
