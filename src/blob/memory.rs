//! Blobs in memory: the simulator's and the tests' store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobError, BlobMeta, BlobStore, BlobWriter, MAX_LIST, MAX_READ, check_key};
use crate::rt;

/// A blob and when it was stored.
#[derive(Debug, Clone)]
struct Stored {
    data: Bytes,
    modified_ms: u64,
}

/// A blob store in memory; clones share the blobs.
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobStore {
    blobs: Arc<Mutex<BTreeMap<String, Stored>>>,
}

impl MemoryBlobStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Stored>) -> T) -> T {
        f(&mut self
            .blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        check_key(key)?;
        self.with(|b| b.get(key).map(|s| s.data.clone()))
            .ok_or_else(|| BlobError::NotFound(key.to_owned()))
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(MemoryWriter {
            store: self.clone(),
            buf: Vec::new(),
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        check_key(key)?;
        let stored = Stored {
            data,
            modified_ms: rt::unix_ms(),
        };
        self.with(|b| b.insert(key.to_owned(), stored));
        Ok(())
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        Ok(self.get(key)?.len() as u64)
    }

    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        let blob = self.get(key)?;
        let size = blob.len() as u64;
        if offset > size || (offset == size && size > 0) {
            return Err(BlobError::OutOfRange {
                key: key.to_owned(),
                offset,
                size,
            });
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(len.min(MAX_READ)).min(blob.len());
        Ok(blob.slice(start..end))
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        check_key(key)?;
        let dir = format!("{key}/");
        Ok(self.with(|b| {
            let before = b.len();
            b.retain(|k, _| k != key && !k.starts_with(&dir));
            b.len() != before
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        check_key(prefix)?;
        let dir = format!("{prefix}/");
        let start = match after {
            Some(a) if a >= dir.as_str() => std::ops::Bound::Excluded(a.to_owned()),
            _ => std::ops::Bound::Included(dir.clone()),
        };
        Ok(self.with(|b| {
            b.range((start, std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&dir))
                .take(limit.min(MAX_LIST))
                .map(|(k, s)| BlobMeta {
                    key: k.clone(),
                    size: s.data.len() as u64,
                    last_modified_ms: s.modified_ms,
                })
                .collect()
        }))
    }

    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}

struct MemoryWriter {
    store: MemoryBlobStore,
    buf: Vec<u8>,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError> {
        self.store.put(key, self.buf.into()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listings_page_in_key_order_under_their_prefix() {
        let store = MemoryBlobStore::new();
        for key in ["hls/b/x", "hls/a/1", "hls/a.b", "hlsx/y", "hl/z", "hls/a/2"] {
            store
                .put(key, Bytes::from_static(b"ab"))
                .await
                .expect("put");
        }
        let keys = |page: Vec<BlobMeta>| page.into_iter().map(|m| m.key).collect::<Vec<_>>();
        assert_eq!(
            keys(store.list("hls", None, 10).await.expect("list")),
            ["hls/a.b", "hls/a/1", "hls/a/2", "hls/b/x"]
        );
        assert_eq!(
            keys(store.list("hls", Some("hls/a/1"), 2).await.expect("list")),
            ["hls/a/2", "hls/b/x"]
        );
        assert_eq!(
            keys(store.list("hls", Some("a"), 1).await.expect("list")),
            ["hls/a.b"],
            "a start before the prefix starts at it"
        );
        assert!(
            store
                .list("hls", Some("i"), 10)
                .await
                .expect("list")
                .is_empty()
        );
        let one = &store.list("hl", None, 10).await.expect("list")[0];
        assert_eq!((one.key.as_str(), one.size), ("hl/z", 2));
    }
}
