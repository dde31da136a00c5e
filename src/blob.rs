//! The blob store: where originals, HLS renditions and thumbnails live.
//! Writes are atomic (nothing is visible under a key until `commit`), so a
//! crash in the middle of an upload leaves no partial blob behind.
//!
//! Backends: the file system under the data dir (production, the monolith),
//! S3-compatible object storage (`s3`, through `object_store`: many hosts,
//! no shared file system) and memory (the simulator, tests). One contract
//! (`testkit/src/blob_contract.rs`) runs on each.

use std::fmt::Debug;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(not(madsim))]
pub mod fs;
pub mod local;
pub mod memory;
#[cfg(not(madsim))]
pub mod s3;

/// Longest key.
pub const MAX_KEY_LEN: usize = 512;
/// Most `/`-separated segments in a key.
pub const MAX_KEY_SEGMENTS: usize = 8;
/// Largest single read.
pub const MAX_READ: usize = 16 << 20;
/// Most entries in one page of a listing (S3's own page size).
pub const MAX_LIST: usize = 1000;

/// The pieces of a read ([`BlobStore::read_stream`]).
pub type ReadStream = futures::stream::BoxStream<'static, Result<Bytes, BlobError>>;

/// `data` as a read of one piece.
#[must_use]
pub fn one_piece(data: Bytes) -> ReadStream {
    Box::pin(futures::stream::once(async { Ok(data) }))
}

/// A stored blob, as a listing names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (committed), in ms since the Unix epoch.
    pub last_modified_ms: u64,
}

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The key is not a valid key (see [`check_key`]).
    #[error("invalid blob key {0:?}: {1}")]
    BadKey(String, &'static str),
    /// Nothing is stored under the key.
    #[error("no blob {0:?}")]
    NotFound(String),
    /// The read starts past the end of the blob.
    #[error("offset {offset} is past the end of {key:?} ({size} bytes)")]
    OutOfRange {
        /// The blob.
        key: String,
        /// The requested offset.
        offset: u64,
        /// The blob's size.
        size: u64,
    },
    /// The storage failed: full ([`crate::error::ErrorKind::StorageFull`]),
    /// or an I/O error.
    #[error("{}", if crate::error::io_kind(.0) == crate::error::ErrorKind::StorageFull {
        "blob store full"
    } else {
        "blob store I/O failed"
    })]
    Io(#[from] std::io::Error),
    /// A remote store (object storage) failed or cannot be reached; the
    /// source says why, for the log.
    #[error("blob store unavailable")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl crate::error::Classify for BlobError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            Self::BadKey(..) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
            Self::Io(e) => crate::error::io_kind(e),
            Self::Remote(_) => ErrorKind::Unavailable,
        }
    }
}

/// Checks a key: 1..=8 `/`-separated segments of `[A-Za-z0-9_.-]`, none
/// empty, `.` or `..`; at most 512 bytes. Keys never escape the store.
///
/// # Errors
/// [`BlobError::BadKey`] saying what is wrong.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let bad = |why| Err(BlobError::BadKey(key.chars().take(64).collect(), why));
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return bad("must be 1..=512 bytes");
    }
    let mut segments = 0;
    for seg in key.split('/') {
        segments += 1;
        if seg.is_empty() || seg == "." || seg == ".." {
            return bad("empty, '.' or '..' segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad("segments are [A-Za-z0-9_.-]");
        }
    }
    if segments > MAX_KEY_SEGMENTS {
        return bad("more than 8 segments");
    }
    Ok(())
}

/// Where blobs are kept.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug {
    /// Starts a new blob; it becomes visible only on [`BlobWriter::commit`].
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Starts a new blob meant for `key`, committed under `key` as one from
    /// [`BlobStore::create`] is. By default that is all; a backend whose
    /// uploads stay invisible until completed writes it in place (S3's
    /// multipart upload: no copy at the commit).
    async fn create_for(&self, key: &str) -> Result<Box<dyn BlobWriter>, BlobError> {
        check_key(key)?;
        self.create().await
    }
    /// Stores `data` under `key` atomically, replacing what was there.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError>;
    /// The size of the blob under `key`.
    async fn size(&self, key: &str) -> Result<u64, BlobError>;
    /// Up to `len` bytes (at most [`MAX_READ`]) from `offset`; fewer at the end.
    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError>;
    /// As [`BlobStore::read`], with the blob's whole size: by default
    /// [`BlobStore::size`] then `read`; a backend that learns both from one
    /// request overrides it (an S3 ranged GET's `Content-Range` carries the
    /// size: one round trip instead of a HEAD and a GET).
    async fn read_sized(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(Bytes, u64), BlobError> {
        let size = self.size(key).await?;
        let data = self.read(key, offset, len).await?;
        Ok((data, size))
    }
    /// As [`BlobStore::read_sized`], the bytes as pieces in order, which
    /// add up to what `read_sized` returns (a caller checks the count): by
    /// default that read's bytes as one piece; a backend reading over a
    /// network passes them on as they arrive (S3: the GET's body), so the
    /// first bytes move on before the last have come.
    async fn read_stream(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(ReadStream, u64), BlobError> {
        let (data, size) = self.read_sized(key, offset, len).await?;
        Ok((one_piece(data), size))
    }
    /// Removes the blob under `key` and every blob under `key/`; true if
    /// anything was removed.
    async fn delete(&self, key: &str) -> Result<bool, BlobError>;
    /// One page of the blobs under `prefix/` (a valid key), in key order:
    /// up to `limit` (at most [`MAX_LIST`]) whose keys sort after `after`;
    /// fewer than asked means the listing is done. The shape of S3's
    /// `ListObjectsV2` (prefix, start-after, max-keys) and of
    /// `object_store`'s `list_with_offset`, so an object storage backend
    /// maps onto it directly. Blobs written or removed meanwhile may or may
    /// not show.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError>;
    /// A local file holding the blob, where the backend has one (ffmpeg
    /// reads from it directly).
    fn local_path(&self, key: &str) -> Option<PathBuf>;

    /// Stores the blobs under `parts`, joined in order, under `key`,
    /// atomically as a commit does; the parts stay. Nothing changes under
    /// `key` unless every part was read.
    ///
    /// This default streams the parts through a writer; a backend that can
    /// join (or share) its stored bytes without moving them does better.
    ///
    /// # Errors
    /// [`BlobError::NotFound`] naming the first missing part; the store's.
    async fn compose(&self, parts: &[String], key: &str) -> Result<(), BlobError> {
        compose_by_copy(self, parts, key).await
    }
}

/// [`BlobStore::compose`] by reading the parts into a new blob.
///
/// # Errors
/// As [`BlobStore::compose`].
pub async fn compose_by_copy<S: BlobStore + ?Sized>(
    store: &S,
    parts: &[String],
    key: &str,
) -> Result<(), BlobError> {
    let mut writer = store.create_for(key).await?;
    for part in parts {
        let size = store.size(part).await?;
        let mut at = 0;
        while at < size {
            let data = store.read(part, at, COMPOSE_READ).await?;
            if data.is_empty() {
                return Err(BlobError::NotFound(part.clone()));
            }
            writer.write(&data).await?;
            at += data.len() as u64;
        }
    }
    writer.commit(key).await
}

/// The reads [`BlobStore::compose`]'s default makes.
const COMPOSE_READ: usize = 4 << 20;

/// A blob being written.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `chunk`.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError>;
    /// Appends `chunk`, which a backend that buffers may keep instead of
    /// copying it (S3's parts are gathered from such chunks).
    async fn write_bytes(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        self.write(&chunk).await
    }
    /// Makes the bytes durable and visible under `key`, replacing what was
    /// there. Dropping the writer without committing discards them.
    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_store() {
        for good in ["originals/abc", "hls/v1/480p/seg_00001.ts", "a.b-c_d"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "..",
            ".",
            "a/",
            "a\0b",
            "a b",
            "a\\b",
            "ü",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"a".repeat(513)).is_err());
    }
}
