//! Faulty disks on stateful nodes: full (writes fail with ENOSPC, SQLite
//! refuses every commit), failing (everything fails with EIO, SQLite
//! statements are interrupted) or slow (every disk operation waits). The
//! fault is set per node in `streamgate::rt::faults`, which the node's
//! SQLite connections and blocking work obey; the blob store every node
//! shares is seen through [`FaultyBlobs`], which obeys the fault of the node
//! making the call. The auditor's rules stay as they are: a disk fault may
//! turn an answer into a 5xx, never into a 4xx or a lost acknowledged
//! upload, and everything works again once it heals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use madsim::task::NodeId;
use streamgate::blob::{BlobError, BlobMeta, BlobStore, BlobWriter};
use streamgate::rt;
use streamgate::rt::faults::{DiskFault, set_disk_fault};

/// What the system says for a full disk and for a failing one.
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

/// Waits out, or fails as, the fault on the calling node's disk; `write`
/// says whether the operation needs space.
async fn obey(write: bool) -> Result<(), BlobError> {
    match rt::faults::disk_fault() {
        Some(DiskFault::Slow(d)) => {
            rt::sleep(d).await;
            Ok(())
        }
        Some(DiskFault::Failing) => Err(BlobError::Io(std::io::Error::from_raw_os_error(EIO))),
        Some(DiskFault::Full) if write => {
            Err(BlobError::Io(std::io::Error::from_raw_os_error(ENOSPC)))
        }
        _ => Ok(()),
    }
}

/// The shared blob store (in memory, or on the object-store node) as the
/// calling node's disk lets it work.
#[derive(Debug, Clone)]
pub struct FaultyBlobs(pub Arc<dyn BlobStore>);

#[async_trait]
impl BlobStore for FaultyBlobs {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        obey(false).await?;
        Ok(Box::new(FaultyWriter(self.0.create().await?)))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        obey(true).await?;
        self.0.put(key, data).await
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        obey(false).await?;
        self.0.size(key).await
    }

    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        obey(false).await?;
        self.0.read(key, offset, len).await
    }

    async fn read_sized(
        &self,
        key: &str,
        offset: u64,
        len: usize,
    ) -> Result<(Bytes, u64), BlobError> {
        obey(false).await?;
        self.0.read_sized(key, offset, len).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        // Deleting frees space: a full disk allows it.
        obey(false).await?;
        self.0.delete(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        obey(false).await?;
        self.0.list(prefix, after, limit).await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.0.local_path(key)
    }
}

struct FaultyWriter(Box<dyn BlobWriter>);

#[async_trait]
impl BlobWriter for FaultyWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        obey(true).await?;
        self.0.write(chunk).await
    }

    async fn commit(self: Box<Self>, key: &str) -> Result<(), BlobError> {
        obey(true).await?;
        self.0.commit(key).await
    }
}

/// The disk fault a strike puts on: `kind` 0 full, 1 failing, 2 slow by
/// `level` (in `[0, 1)`) of 20..=500 ms per operation.
pub fn fault(kind: u8, level: f64) -> DiskFault {
    match kind {
        0 => DiskFault::Full,
        1 => DiskFault::Failing,
        _ => DiskFault::Slow(Duration::from_millis(20 + (480.0 * level) as u64)),
    }
}

/// Puts `fault` on `node`'s disk until `heal` is called.
pub fn strike(node: NodeId, fault: DiskFault) {
    set_disk_fault(node, Some(fault));
}

/// Heals `node`'s disk.
pub fn heal(node: NodeId) {
    set_disk_fault(node, None);
}
