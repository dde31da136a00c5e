//! The upload records on a database reached over the network, as the
//! simulator runs them: [`RecordsDb`] is the modelled database node's
//! table (the same node as the catalog's, `metadata::remote`), and
//! [`RemoteRecords`] the upload instances' client of it. In production the
//! shared records are PostgreSQL ([`pg_store`](super::pg_store)); the
//! contract suite (`records/tests.rs`) runs on all three back ends. No
//! call here reads and then writes, so the model needs no locks: each call
//! is one statement, and the idempotency key's uniqueness is the SQLite
//! [`Store`]'s own index. Its state lives in this value, outside the node:
//! commits outlive a crash.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::store::{Store, StoreError};
use crate::proto::UploadInfo;
use crate::registry::consul::{HttpTransport, ModelClient, PostError, json_answer};

/// The path every request goes to.
pub const PATH: &str = "/v1/uploads";
/// Longest answer read.
const BODY_LIMIT: usize = 16 << 20;

/// A record on the wire (its protobuf encoding, in base64).
pub use crate::text::Base64Proto as Row;

/// One call, one statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// [`Store::insert`].
    Insert {
        /// The record.
        upload: Row<UploadInfo>,
        /// Its idempotency key.
        key: Option<String>,
    },
    /// [`Store::get`].
    Get {
        /// The upload's id.
        id: String,
    },
    /// [`Store::by_key`].
    ByKey {
        /// The owner.
        owner: String,
        /// The idempotency key.
        key: String,
    },
    /// [`Store::delete`].
    Delete {
        /// The upload's id.
        id: String,
    },
    /// [`Store::delete_video`].
    DeleteVideo {
        /// The video's id.
        video_id: String,
    },
    /// [`Store::list`].
    List {
        /// The owner.
        owner: String,
        /// After this `(created_at_ms, upload_id)`.
        after: Option<(i64, String)>,
        /// Most records.
        limit: u32,
    },
}

/// A call's answer (status 200); a failure answers 503 with
/// `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// A record, if there is one.
    Upload(Option<Row<UploadInfo>>),
    /// How many records a delete removed.
    Deleted(usize),
    /// A page.
    Uploads(Vec<Row<UploadInfo>>),
}

/// The modelled database node's upload records.
#[derive(Debug)]
pub struct RecordsDb {
    store: Mutex<Store>,
}

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RecordsDb {
    /// An empty table.
    ///
    /// # Errors
    /// SQLite cannot open an in-memory database.
    pub fn new() -> Result<Arc<Self>, StoreError> {
        Ok(Arc::new(Self {
            store: Mutex::new(Store::open(None)?),
        }))
    }

    /// The node's HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            .with_state(Arc::clone(self))
    }

    fn answer(&self, req: Request) -> Result<Answer, StoreError> {
        let mut store = lock(&self.store);
        Ok(match req {
            Request::Insert { upload, key } => {
                store.insert(&upload.0, key.as_deref())?;
                Answer::Done
            }
            Request::Get { id } => Answer::Upload(store.get(&id)?.map(Row)),
            Request::ByKey { owner, key } => Answer::Upload(store.by_key(&owner, &key)?.map(Row)),
            Request::Delete { id } => Answer::Deleted(usize::from(store.delete(&id)?)),
            Request::DeleteVideo { video_id } => Answer::Deleted(store.delete_video(&video_id)?),
            Request::List {
                owner,
                after,
                limit,
            } => {
                let after = after.as_ref().map(|(at, id)| (*at, id.as_str()));
                Answer::Uploads(
                    store
                        .list(&owner, after, limit)?
                        .into_iter()
                        .map(Row)
                        .collect(),
                )
            }
        })
    }
}

async fn handle(State(db): State<Arc<RecordsDb>>, Json(req): Json<Request>) -> Response {
    json_answer(db.answer(req))
}

/// The upload records on a [`RecordsDb`] at `base` (`http://ip:port`).
#[derive(Debug, Clone)]
pub struct RemoteRecords(ModelClient);

/// The database failed: why, kept as the error's source.
fn down(why: impl Into<String>) -> StoreError {
    StoreError::Database(PostError::new(why))
}

fn unexpected(answer: &Answer) -> StoreError {
    down(format!("unexpected answer {answer:?}"))
}

impl RemoteRecords {
    /// A client of the database at `base` (`http://ip:port`).
    #[must_use]
    pub fn new(base: &str, transport: Arc<dyn HttpTransport>) -> Self {
        Self(ModelClient::new(base, PATH, transport, BODY_LIMIT))
    }

    async fn call(&self, req: &Request) -> Result<Answer, StoreError> {
        self.0.call(req).await.map_err(StoreError::Database)
    }

    /// See [`Records::insert`](super::records::Records::insert).
    ///
    /// # Errors
    /// The key was taken; the database failed or is unreachable.
    pub async fn insert(&self, u: UploadInfo, key: Option<String>) -> Result<(), StoreError> {
        match self
            .call(&Request::Insert {
                upload: Row(u),
                key,
            })
            .await?
        {
            Answer::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn one(&self, req: &Request) -> Result<Option<UploadInfo>, StoreError> {
        match self.call(req).await? {
            Answer::Upload(u) => Ok(u.map(|r| r.0)),
            other => Err(unexpected(&other)),
        }
    }

    async fn deleted(&self, req: &Request) -> Result<usize, StoreError> {
        match self.call(req).await? {
            Answer::Deleted(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Records::get`](super::records::Records::get).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn get(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        self.one(&Request::Get { id: id.to_owned() }).await
    }

    /// See [`Records::by_key`](super::records::Records::by_key).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn by_key(&self, owner: &str, key: &str) -> Result<Option<UploadInfo>, StoreError> {
        let (owner, key) = (owner.to_owned(), key.to_owned());
        self.one(&Request::ByKey { owner, key }).await
    }

    /// See [`Records::delete`](super::records::Records::delete).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        Ok(self.deleted(&Request::Delete { id }).await? > 0)
    }

    /// See [`Records::delete_video`](super::records::Records::delete_video).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn delete_video(&self, video_id: &str) -> Result<usize, StoreError> {
        let video_id = video_id.to_owned();
        self.deleted(&Request::DeleteVideo { video_id }).await
    }

    /// See [`Records::list`](super::records::Records::list).
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn list(
        &self,
        owner: String,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<UploadInfo>, StoreError> {
        match self
            .call(&Request::List {
                owner,
                after,
                limit,
            })
            .await?
        {
            Answer::Uploads(page) => Ok(page.into_iter().map(|r| r.0).collect()),
            other => Err(unexpected(&other)),
        }
    }
}
