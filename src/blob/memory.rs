//! Blobs in memory: the simulator's and the tests' store.

use std::sync::{Arc, Mutex};

use crate::HashMap;
use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobError, BlobStore, BlobWriter, MAX_READ, check_key};

/// A blob store in memory; clones share the blobs.
#[derive(Debug, Clone, Default)]
pub struct MemoryBlobStore {
    blobs: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl MemoryBlobStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Bytes>) -> T) -> T {
        f(&mut self
            .blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        check_key(key)?;
        self.with(|b| b.get(key).cloned())
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
        self.with(|b| b.insert(key.to_owned(), data));
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
