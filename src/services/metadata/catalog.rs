//! The video catalog on one of two back ends:
//! - SQLite ([`Store`]): a file under the data dir, or in memory. The
//!   monolith's and the simulator's; one instance per file.
//! - PostgreSQL ([`PgStore`], `--database-url`): shared by every metadata
//!   instance, on any host.
//!
//! Both keep the same rules (the contract suite in `catalog/tests.rs` runs
//! on each): an event applies once, pages come newest first in the same
//! order, an update that `f` refuses stores nothing.

use std::sync::{Arc, Mutex};

#[cfg(not(madsim))]
use super::pg_store::PgStore;
use super::remote::RemoteCatalog;
use super::state::Step;
pub use super::store::Filter;
use super::store::{Store, StoreError, Updated};
use crate::proto::Video;

/// The catalog the server and the event consumer share.
#[derive(Debug, Clone)]
pub enum Catalog {
    /// SQLite, used off the async workers.
    Sqlite(Arc<Mutex<Store>>),
    /// PostgreSQL.
    #[cfg(not(madsim))]
    Postgres(PgStore),
    /// A modelled database node (the simulator's stand-in for PostgreSQL).
    Remote(RemoteCatalog),
}

impl Catalog {
    /// The SQLite catalog `store`.
    #[must_use]
    pub fn sqlite(store: Store) -> Self {
        Self::Sqlite(Arc::new(Mutex::new(store)))
    }

    /// Inserts a new video.
    ///
    /// # Errors
    /// [`StoreError::Exists`] if the id is taken; store failures.
    pub async fn create(&self, v: Video) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => crate::sqlite::with(s, move |s| s.create(&v)).await,
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.create(&v).await,
            Self::Remote(s) => s.create(v).await,
        }
    }

    /// The video `id`.
    ///
    /// # Errors
    /// Store failures; a corrupt record.
    pub async fn get(&self, id: &str) -> Result<Option<Video>, StoreError> {
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

    /// Changes video `id` by `f`: `None` if there is no such video,
    /// `Some(Err)` (nothing stored) if `f` refuses. Two concurrent updates
    /// of one video both land, neither unseen by the other.
    ///
    /// # Errors
    /// Store failures.
    pub async fn update<T, E>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Video) -> Result<T, E> + Send + 'static,
    ) -> Result<Updated<T, E>, StoreError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        match self {
            Self::Sqlite(s) => {
                let id = id.to_owned();
                crate::sqlite::with(s, move |s| s.update(&id, f)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.update(id, f).await,
            Self::Remote(s) => s.update(id, f).await,
        }
    }

    /// Removes `id`; true if it existed.
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

    /// Up to `limit` videos passing `filter`, newest first, after the
    /// `(created_at_ms, id)` cursor.
    ///
    /// # Errors
    /// Store failures; a corrupt record.
    pub async fn list(
        &self,
        filter: Filter,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<Video>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                crate::sqlite::with(s, move |s| {
                    s.list(
                        &filter,
                        after.as_ref().map(|(at, id)| (*at, id.as_str())),
                        limit,
                    )
                })
                .await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => {
                s.list(
                    &filter,
                    after.as_ref().map(|(at, id)| (*at, id.as_str())),
                    limit,
                )
                .await
            }
            Self::Remote(s) => s.list(filter, after, limit).await,
        }
    }

    /// Applies pipeline event `event_id` to video `id` once: the video
    /// after it, or `None` when the event was already applied (by any
    /// instance sharing the store), the video is unknown or nothing
    /// changes.
    ///
    /// # Errors
    /// Store failures.
    pub async fn apply(
        &self,
        event_id: String,
        id: String,
        now_ms: u64,
        step: Step,
        fill: impl FnOnce(&mut Video) + Send + 'static,
    ) -> Result<Option<Video>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                crate::sqlite::with(s, move |s| s.apply(&event_id, &id, now_ms, &step, fill)).await
            }
            #[cfg(not(madsim))]
            Self::Postgres(s) => s.apply(&event_id, &id, now_ms, &step, fill).await,
            Self::Remote(s) => s.apply(event_id, id, now_ms, step, fill).await,
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests;
