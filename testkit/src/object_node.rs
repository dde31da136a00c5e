//! Blobs on an object-store node reached over the network, as the
//! simulator runs them: [`ObjectNode`] serves any [`BlobStore`] (the
//! swarm's is in memory) over HTTP, and [`RemoteBlobs`] is every service's
//! client of it. In production the shared store is S3-compatible object
//! storage (`streamgate::blob::s3`, not in the simulation build); this model
//! keeps what the services see of it across the network: a writer sends
//! its bytes in parts as it goes and the object appears whole at commit
//! (S3's multipart upload), a part or call lost to a crash or a partition
//! fails as unavailable, and what was stored outlives the node's restart
//! (the state lives in the served store, outside the node), while
//! uploads in progress do not. The blob contract
//! ([`crate::blob_contract`]) runs on it as on every back end
//! (`sim/objects.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use streamgate::blob::{BlobError, BlobMeta, BlobStore, BlobWriter, MAX_LIST, MAX_READ, check_key};
use streamgate::registry::consul::{HttpTransport, ModelClient, PostError, json_answer};

/// The path every request goes to.
pub const PATH: &str = "/v1/objects";
/// A writer sends its bytes in parts of this size (and the rest at commit).
pub const PART: usize = 1 << 20;
/// Longest answer read: the largest read, in base64, and room.
const BODY_LIMIT: usize = MAX_READ / 3 * 4 + (1 << 20);

/// Bytes on the wire, in base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data(pub Bytes);

impl Serialize for Data {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        streamgate::text::base64_serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        streamgate::text::base64_deserialize(d).map(|v| Data(v.into()))
    }
}

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Begin a multipart upload.
    Begin,
    /// Append a part to an upload.
    Part {
        /// The upload.
        upload: u64,
        /// The bytes.
        data: Data,
    },
    /// Append the last bytes and store the whole under `key`.
    Complete {
        /// The upload.
        upload: u64,
        /// The last bytes.
        data: Data,
        /// Where.
        key: String,
    },
    /// [`BlobStore::put`].
    Put {
        /// Where.
        key: String,
        /// What.
        data: Data,
    },
    /// [`BlobStore::read_sized`] (a ranged GET: the range and the size).
    Read {
        /// The blob.
        key: String,
        /// From.
        offset: u64,
        /// At most this many bytes.
        len: usize,
    },
    /// [`BlobStore::size`].
    Size {
        /// The blob.
        key: String,
    },
    /// [`BlobStore::delete`].
    Delete {
        /// The blob (and everything under it).
        key: String,
    },
    /// [`BlobStore::list`].
    List {
        /// Under this.
        prefix: String,
        /// After this key.
        after: Option<String>,
        /// At most this many.
        limit: usize,
    },
}

/// A failure the client rebuilds as the same [`BlobError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refused {
    /// [`BlobError::NotFound`].
    NotFound(String),
    /// [`BlobError::OutOfRange`].
    OutOfRange {
        /// The blob.
        key: String,
        /// The offset asked for.
        offset: u64,
        /// The blob's size.
        size: u64,
    },
    /// The upload is unknown (the node restarted, or it was abandoned).
    NoSuchUpload,
}

/// A call's answer (status 200). A failure of the served store answers
/// 503 with `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// An upload begun.
    Upload(u64),
    /// Bytes read and the blob's size.
    Read(Data, u64),
    /// A size.
    Size(u64),
    /// Whether a delete removed anything.
    Deleted(bool),
    /// A page of a listing: `(key, size, last_modified_ms)`.
    Listed(Vec<(String, u64, u64)>),
    /// Refused, as the store would refuse.
    Refused(Refused),
}

#[derive(Debug, Default)]
struct Uploads {
    next: u64,
    open: HashMap<u64, Vec<u8>>,
}

/// The object-store node: `store` served over HTTP, with the multipart
/// uploads in progress.
#[derive(Debug)]
pub struct ObjectNode {
    store: Arc<dyn BlobStore>,
    uploads: Mutex<Uploads>,
}

fn lock(m: &Mutex<Uploads>) -> MutexGuard<'_, Uploads> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ObjectNode {
    /// A node serving `store`.
    #[must_use]
    pub fn new(store: Arc<dyn BlobStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            uploads: Mutex::new(Uploads::default()),
        })
    }

    /// The node came back from a crash: what was stored is there, the
    /// uploads in progress are gone.
    pub fn restarted(&self) {
        lock(&self.uploads).open.clear();
    }

    /// Uploads begun and neither completed nor lost: each holds its parts.
    #[must_use]
    pub fn uploads_in_progress(&self) -> usize {
        lock(&self.uploads).open.len()
    }

    /// The node's HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            // A put or a read of the largest size, in base64.
            .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(Arc::clone(self))
    }

    async fn answer(&self, req: Request) -> Result<Answer, BlobError> {
        let refused = |e: BlobError| match e {
            BlobError::NotFound(key) => Ok(Answer::Refused(Refused::NotFound(key))),
            BlobError::OutOfRange { key, offset, size } => {
                Ok(Answer::Refused(Refused::OutOfRange { key, offset, size }))
            }
            other => Err(other),
        };
        Ok(match req {
            Request::Begin => {
                let mut uploads = lock(&self.uploads);
                uploads.next += 1;
                let id = uploads.next;
                uploads.open.insert(id, Vec::new());
                Answer::Upload(id)
            }
            Request::Part { upload, data } => match lock(&self.uploads).open.get_mut(&upload) {
                Some(buf) => {
                    buf.extend_from_slice(&data.0);
                    Answer::Done
                }
                None => Answer::Refused(Refused::NoSuchUpload),
            },
            Request::Complete { upload, data, key } => {
                let Some(mut buf) = lock(&self.uploads).open.remove(&upload) else {
                    return Ok(Answer::Refused(Refused::NoSuchUpload));
                };
                buf.extend_from_slice(&data.0);
                self.store.put(&key, buf.into()).await?;
                Answer::Done
            }
            Request::Put { key, data } => {
                self.store.put(&key, data.0).await?;
                Answer::Done
            }
            Request::Read { key, offset, len } => {
                match self.store.read_sized(&key, offset, len).await {
                    Ok((data, size)) => Answer::Read(Data(data), size),
                    Err(e) => return refused(e),
                }
            }
            Request::Size { key } => match self.store.size(&key).await {
                Ok(size) => Answer::Size(size),
                Err(e) => return refused(e),
            },
            Request::Delete { key } => Answer::Deleted(self.store.delete(&key).await?),
            Request::List {
                prefix,
                after,
                limit,
            } => Answer::Listed(
                self.store
                    .list(&prefix, after.as_deref(), limit)
                    .await?
                    .into_iter()
                    .map(|m| (m.key, m.size, m.last_modified_ms))
                    .collect(),
            ),
        })
    }
}

async fn handle(State(node): State<Arc<ObjectNode>>, Json(req): Json<Request>) -> Response {
    json_answer(node.answer(req).await)
}

/// Blobs on an [`ObjectNode`] at `base` (`http://ip:port`).
#[derive(Debug, Clone)]
pub struct RemoteBlobs(ModelClient);

fn down(why: impl Into<String>) -> BlobError {
    BlobError::Remote(Box::new(PostError::new(why)))
}

fn unexpected(answer: &Answer) -> BlobError {
    match answer {
        Answer::Refused(Refused::NotFound(key)) => BlobError::NotFound(key.clone()),
        Answer::Refused(Refused::OutOfRange { key, offset, size }) => BlobError::OutOfRange {
            key: key.clone(),
            offset: *offset,
            size: *size,
        },
        Answer::Refused(Refused::NoSuchUpload) => {
            down("the upload was lost (the object store restarted)")
        }
        other => down(format!("unexpected answer {other:?}")),
    }
}

impl RemoteBlobs {
    /// A client of the node at `base` (`http://ip:port`).
    #[must_use]
    pub fn new(base: &str, transport: Arc<dyn HttpTransport>) -> Self {
        Self(ModelClient::new(base, PATH, transport, BODY_LIMIT))
    }

    async fn call(&self, req: &Request) -> Result<Answer, BlobError> {
        self.0
            .call(req)
            .await
            .map_err(|e| BlobError::Remote(Box::new(e)))
    }

    async fn done(&self, req: &Request) -> Result<(), BlobError> {
        match self.call(req).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

#[async_trait]
impl BlobStore for RemoteBlobs {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        match self.call(&Request::Begin).await? {
            Answer::Upload(upload) => Ok(Box::new(RemoteWriter {
                blobs: self.clone(),
                upload,
                buf: Vec::new(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        check_key(key)?;
        let key = key.to_owned();
        self.done(&Request::Put {
            key,
            data: Data(data),
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        check_key(key)?;
        match self.call(&Request::Size { key: key.into() }).await? {
            Answer::Size(size) => Ok(size),
            other => Err(unexpected(&other)),
        }
    }

    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        self.read_sized(key, offset, len)
            .await
            .map(|(data, _)| data)
    }

    async fn read_sized(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(Bytes, u64), BlobError> {
        check_key(key)?;
        let req = Request::Read {
            key: key.into(),
            offset,
            len: len.min(MAX_READ),
        };
        match self.call(&req).await? {
            Answer::Read(data, size) => Ok((data.0, size)),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        match self.call(&Request::Delete { key: key.into() }).await? {
            Answer::Deleted(gone) => Ok(gone),
            other => Err(unexpected(&other)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        check_key(prefix)?;
        let req = Request::List {
            prefix: prefix.into(),
            after: after.map(str::to_owned),
            limit: limit.min(MAX_LIST),
        };
        match self.call(&req).await? {
            Answer::Listed(page) => Ok(page
                .into_iter()
                .map(|(key, size, last_modified_ms)| BlobMeta {
                    key,
                    size,
                    last_modified_ms,
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}

/// A blob being written to the node: parts of [`PART`] sent as they fill,
/// the rest with the commit.
struct RemoteWriter {
    blobs: RemoteBlobs,
    upload: u64,
    buf: Vec<u8>,
}

#[async_trait]
impl BlobWriter for RemoteWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.buf.extend_from_slice(chunk);
        while self.buf.len() >= PART {
            let rest = self.buf.split_off(PART);
            let data = Data(std::mem::replace(&mut self.buf, rest).into());
            let upload = self.upload;
            self.blobs.done(&Request::Part { upload, data }).await?;
        }
        Ok(())
    }

    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        let req = Request::Complete {
            upload: self.upload,
            data: Data(self.buf.into()),
            key: key.to_owned(),
        };
        self.blobs.done(&req).await
    }
}
