//! Blobs in S3-compatible object storage (Garage, MinIO, AWS S3, ...)
//! through the `object_store` crate: every service instance on any host
//! sees the same blobs, with no shared file system.
//!
//! - A new blob streams into a multipart upload (5 MiB parts, never whole
//!   in memory), which S3 shows under its key only once completed. One
//!   started for its key ([`BlobStore::create_for`]) is written in place:
//!   the commit completes it, atomically. One started without a key
//!   ([`BlobStore::create`]) goes under `<prefix>/staging/<random>`, and
//!   its commit completes it and copies it server-side to the key (S3's
//!   copy takes objects up to 5 GiB; a crash between the completion and
//!   the copy leaves a staging object, outside the keys the orphan sweep
//!   lists: a bucket lifecycle rule expiring `staging/` after a day
//!   removes it). A writer dropped without commit aborts its upload (the
//!   server drops the parts); so does a lifecycle rule aborting incomplete
//!   multipart uploads, for a crash meanwhile.
//! - Reads are ranged GETs; listings are `ListObjectsV2` pages after a key.
//! - There is no local file: the transcoder copies an original into its
//!   work dir, and the media path reads ranges.
//!
//! Not in the simulation build (it speaks HTTP through reqwest); the
//! simulator keeps the memory store.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use object_store::WriteMultipart;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::{
    BlobError, BlobMeta, BlobStore, BlobWriter, MAX_LIST, MAX_READ, ReadStream, check_key,
};

/// Where the blobs are: a bucket, a key prefix inside it, and how to reach
/// the server. Credentials come from here, never from a log.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Keys are stored under `<prefix>/` (empty: at the bucket's root).
    pub prefix: String,
    /// The endpoint URL (`http://127.0.0.1:3900`); `None`: AWS itself.
    pub endpoint: Option<String>,
    /// The region (`garage` for Garage's default).
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Blobs in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

fn remote(e: object_store::Error) -> BlobError {
    BlobError::Remote(e.into())
}

/// `e` as a blob error: a missing object is [`BlobError::NotFound`] of
/// `key`, anything else the store being unavailable.
fn classify(key: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
        e => remote(e),
    }
}

impl S3BlobStore {
    /// A store over `config`'s bucket. Nothing is contacted until first
    /// use.
    ///
    /// # Errors
    /// The configuration is refused (e.g. a malformed endpoint).
    pub fn new(config: &S3Config) -> Result<Self, BlobError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder.build().map_err(remote)?;
        Ok(Self::over(Arc::new(store), &config.prefix))
    }

    /// A store over any `object_store` back end, under `prefix`.
    #[must_use]
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// A ranged read of up to `len` bytes from `offset`, with the blob's
    /// size: one ranged GET, whose `Content-Range` carries the size (its
    /// body still to read); a HEAD and a GET only when that one fails (a
    /// range past the end).
    async fn ranged(&self, key: &str, offset: u64, len: usize) -> Result<Ranged, BlobError> {
        check_key(key)?;
        let len = len.min(MAX_READ) as u64;
        let path = self.path(key);
        if len > 0 {
            let range = object_store::GetOptions::default().with_range(Some(offset..offset + len));
            match self.store.get_opts(&path, range).await {
                Ok(got) => return Ok(Ranged::Got(got)),
                // Past the end (S3 answers 416) or gone: the size says which.
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(BlobError::NotFound(key.to_owned()));
                }
                Err(_) => {}
            }
        }
        let size = self.size(key).await?;
        if offset > size || (offset == size && size > 0) {
            return Err(BlobError::OutOfRange {
                key: key.to_owned(),
                offset,
                size,
            });
        }
        if len == 0 || size == 0 {
            return Ok(Ranged::Read(Bytes::new(), size));
        }
        let end = (offset + len).min(size);
        let data = self
            .store
            .get_range(&path, offset..end)
            .await
            .map_err(|e| classify(key, e))?;
        Ok(Ranged::Read(data, size))
    }

    /// A writer of a multipart upload to `at`.
    async fn writer(&self, at: Path) -> Result<Box<dyn BlobWriter>, BlobError> {
        let upload = self.store.put_multipart(&at).await.map_err(remote)?;
        Ok(Box::new(S3Writer {
            store: self.clone(),
            at,
            upload: Some(WriteMultipart::new(upload)),
        }))
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The blob key of an object path (`None` outside the prefix).
    fn key_of<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(path)
        } else {
            path.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.writer(self.path(&format!("staging/{}", crate::rt::random_hex128())))
            .await
    }

    async fn create_for(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        check_key(key)?;
        self.writer(self.path(key)).await
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        check_key(key)?;
        self.store
            .put(&self.path(key), data.into())
            .await
            .map_err(remote)?;
        Ok(())
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        check_key(key)?;
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| classify(key, e))?;
        Ok(meta.size)
    }

    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        self.read_sized(key, offset, len)
            .await
            .map(|(data, _)| data)
    }

    /// One ranged GET, whose `Content-Range` carries the size; a HEAD and
    /// a GET only when that one fails (a range past the end).
    async fn read_sized(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(Bytes, u64), BlobError> {
        match self.ranged(key, offset, len).await? {
            Ranged::Got(got) => {
                let size = got.meta.size;
                let data = got.bytes().await.map_err(|e| classify(key, e))?;
                Ok((data, size))
            }
            Ranged::Read(data, size) => Ok((data, size)),
        }
    }

    /// As `read_sized`, the GET's body passed on as it arrives (a body
    /// that fails mid-way, a slow reader's timeout included, object_store
    /// retries for the rest of the range under the same ETag).
    async fn read_stream(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(ReadStream, u64), BlobError> {
        match self.ranged(key, offset, len).await? {
            Ranged::Got(got) => {
                let size = got.meta.size;
                let key = key.to_owned();
                let pieces = got
                    .into_stream()
                    .map(move |piece| piece.map_err(|e| classify(&key, e)));
                Ok((pieces.boxed(), size))
            }
            Ranged::Read(data, size) => Ok((super::one_piece(data), size)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        let path = self.path(key);
        let existed = match self.store.head(&path).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(remote(e)),
        };
        if existed {
            self.store.delete(&path).await.map_err(remote)?;
        }
        // Everything under `key/`, a page at a time (bounded: a store that
        // keeps listing what it was told to delete is failing).
        let mut removed_below = false;
        for _ in 0..10_000 {
            let page: Vec<_> = self.store.list(Some(&path)).take(MAX_LIST).collect().await;
            if page.is_empty() {
                break;
            }
            for meta in page {
                let meta = meta.map_err(remote)?;
                self.store.delete(&meta.location).await.map_err(remote)?;
                removed_below = true;
            }
        }
        Ok(existed || removed_below)
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        check_key(prefix)?;
        let root = self.path(prefix);
        let limit = limit.min(MAX_LIST);
        let mut stream = match after {
            Some(after) => self.store.list_with_offset(Some(&root), &self.path(after)),
            None => self.store.list(Some(&root)),
        };
        let mut page = Vec::new();
        while page.len() < limit {
            let Some(meta) = stream.next().await else {
                break;
            };
            let meta = meta.map_err(remote)?;
            let Some(key) = self.key_of(meta.location.as_ref()) else {
                continue;
            };
            page.push(BlobMeta {
                key: key.to_owned(),
                size: meta.size,
                last_modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
            });
        }
        Ok(page)
    }

    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// One part: S3's own copy (inside the server, atomic, up to 5 GiB);
    /// more: streamed through a writer (the default).
    async fn compose(&self, parts: &[String], key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        match parts {
            [part] => {
                check_key(part)?;
                self.store
                    .copy(&self.path(part), &self.path(key))
                    .await
                    .map_err(|e| classify(part, e))
            }
            _ => super::compose_by_copy(self, parts, key).await,
        }
    }
}

/// What a ranged read found: a GET whose body is still to read, or the
/// bytes of the fallback.
enum Ranged {
    Got(object_store::GetResult),
    Read(Bytes, u64),
}

/// A blob being streamed into a multipart upload to `at` (its key, or a
/// staging path).
struct S3Writer {
    store: S3BlobStore,
    at: Path,
    upload: Option<WriteMultipart>,
}

/// Parts uploaded at once per writer.
const PARTS_IN_FLIGHT: usize = 4;

impl S3Writer {
    /// The upload, once it has room for another part in flight.
    async fn ready(&mut self) -> Result<&mut WriteMultipart, BlobError> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| BlobError::Remote("the upload was already finished".into()))?;
        upload
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(remote)?;
        Ok(upload)
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.ready().await?.write(chunk);
        Ok(())
    }

    async fn write_bytes(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.ready().await?.put(chunk);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        let upload = self
            .upload
            .take()
            .ok_or_else(|| BlobError::Remote("the upload was already finished".into()))?;
        upload.finish().await.map_err(remote)?;
        let to = self.store.path(key);
        if to == self.at {
            return Ok(());
        }
        let store = &self.store.store;
        let copied = store.copy(&self.at, &to).await;
        // The staging object goes either way.
        let _ = store.delete(&self.at).await;
        copied.map_err(remote)
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            // Not committed: abort the multipart upload so the server drops
            // its parts.
            crate::rt::spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(error = %e, "aborting an unfinished blob upload failed");
                }
            });
        }
    }
}
