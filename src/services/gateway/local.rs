//! Originals and HLS segments the gateway sends from the local file system,
//! when it shares streaming's blob store (the monolith; services sharing a
//! data dir), as nginx's X-Accel-Redirect lets an application name a file
//! for the front server to send. Streaming still says which file it is
//! (LocateOriginal, LocateSegment: its identity, device, inode, size and
//! mtime). The gateway opens the file its own store keeps under the blob's
//! key and sends it only if it is that very file; else it reads through
//! ReadRange or GetSegment as before. So a file is never opened on
//! streaming's word alone, and the gRPC hop and its copies leave the byte
//! path.
//!
//! Each blob's identity is remembered (bounded): a hit costs an open and
//! an fstat, no call. A deleted or replaced blob fails the check and is
//! located afresh; a blob found not to be this store's file stays read
//! through streaming.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;

use crate::HashMap;
use crate::blob::local::{self, FileId};
use crate::proto::LocatedFile;
use crate::rt;

/// Most blobs whose place is remembered; past it the memory starts over.
pub const MAX_ENTRIES: usize = 4096;
/// Largest read from the file, and so the largest body chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Where a blob lies, as far as this gateway can tell.
#[derive(Debug, Clone)]
enum Place {
    /// The file with this identity.
    File(FileId),
    /// Not in a file this gateway can open: read it through streaming.
    Elsewhere,
}

/// Blob key -> where the blob lies.
#[derive(Debug, Default)]
pub struct Located {
    places: Mutex<HashMap<String, Place>>,
}

impl Located {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Place>> {
        self.places
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<Place> {
        self.lock().get(key).cloned()
    }

    fn put(&self, key: &str, place: Place) {
        let mut places = self.lock();
        if places.len() >= MAX_ENTRIES && !places.contains_key(key) {
            // Start over rather than track recency: a miss costs one call.
            places.clear();
        }
        places.insert(key.to_owned(), place);
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Blobs remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A blob's file, opened from the gateway's store.
#[derive(Debug)]
pub struct Original {
    file: Arc<std::fs::File>,
    size: u64,
}

impl Original {
    /// The file's size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }
}

async fn open_checked(path: Arc<Path>, id: FileId) -> Option<Original> {
    let file = match local::open_checked_cached(&path, id) {
        Ok(Some(file)) => file,
        Ok(None) => rt::blocking(move || local::open_checked(&path, id))
            .await
            .ok()?
            .ok()?,
        Err(_) => return None,
    };
    Some(Original {
        file: Arc::new(file),
        size: id.size,
    })
}

/// The blob under `key` opened from `path`, the file the gateway's own
/// store keeps under that key, when that is the file `locate` names; or
/// `None` when it must be read through streaming (another file, no file,
/// or `locate` failed: streaming's read then answers with the right error).
pub async fn open<F, Fut>(
    located: &Located,
    key: &str,
    path: Arc<Path>,
    locate: F,
) -> Option<Original>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<LocatedFile>>,
{
    let remembered = located.get(key);
    match remembered {
        Some(Place::Elsewhere) => return None,
        Some(Place::File(id)) => {
            if let Some(original) = open_checked(path.clone(), id).await {
                return Some(original);
            }
            // Deleted or replaced since: ask again.
        }
        None => {}
    }
    let Some(found) = locate().await else {
        if remembered.is_some() {
            // Gone (or streaming can't say): forget it, not to try its
            // file again on every request.
            located.forget(key);
        }
        return None;
    };
    let id = FileId {
        device: found.device,
        inode: found.inode,
        size: found.size_bytes,
        modified_ns: found.modified_ns,
    };
    if found.path.is_empty() {
        located.put(key, Place::Elsewhere);
        return None;
    }
    if let Some(original) = open_checked(path.clone(), id).await {
        located.put(key, Place::File(id));
        return Some(original);
    }
    tracing::debug!(
        key,
        path = %path.display(),
        located = found.path,
        "the blob is not this store's file: reading it through streaming"
    );
    located.put(key, Place::Elsewhere);
    None
}

/// The bytes `[from, end)` of `original` (a blob) as `response`'s body:
/// marked to be sent from the file by `sendfile(2)` on a media port
/// ([`rt::transport::SendFile`]), and read [`CHUNK_BYTES`] at a time as the
/// client takes them on any other.
pub fn send(response: &mut http::Response<Body>, original: Original, from: u64, end: u64) {
    response.extensions_mut().insert(rt::transport::SendFile {
        file: original.file.clone(),
        from,
        end,
    });
    *response.body_mut() = body(original, from, end);
}

/// The bytes `[from, end)` of `original` (a blob), read [`CHUNK_BYTES`] at a time
/// as the client takes them. A file that comes up short (changed
/// underneath) fails the body: the client sees a truncated response, never
/// wrong bytes.
pub fn body(original: Original, from: u64, end: u64) -> Body {
    let state = (Some(original.file), from);
    Body::from_stream(futures::stream::try_unfold(
        state,
        move |(file, at)| async move {
            let Some(file) = file.filter(|_| at < end) else {
                return Ok::<_, std::io::Error>(None);
            };
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(CHUNK_BYTES);
            let (file, data) = local::read_chunk(file, at, want).await?;
            Ok(Some((Bytes::from(data), (Some(file), at + want as u64))))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("a scratch directory")
    }

    fn located_at(path: &Path) -> LocatedFile {
        let id = FileId::of(&std::fs::metadata(path).expect("meta"));
        LocatedFile {
            path: path.to_str().expect("utf-8").to_owned(),
            size_bytes: id.size,
            device: id.device,
            inode: id.inode,
            modified_ns: id.modified_ns,
        }
    }

    async fn bytes(original: Original, from: u64, end: u64) -> Vec<u8> {
        body(original, from, end)
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn a_located_file_is_opened_and_remembered() {
        let d = dir();
        let path = d.path().join("original");
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let located = Located::default();
        let calls = AtomicUsize::new(0);
        let locate = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Some(located_at(&path))
        };

        let at: Arc<Path> = path.as_path().into();
        let original = open(&located, "v1", at.clone(), locate)
            .await
            .expect("local");
        assert_eq!(original.size(), data.len() as u64);
        let (from, end) = (CHUNK_BYTES as u64 - 3, 3 * CHUNK_BYTES as u64 + 5);
        assert_eq!(
            bytes(original, from, end).await,
            &data[from as usize..end as usize]
        );
        let again = open(&located, "v1", at.clone(), locate)
            .await
            .expect("local");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the place is remembered");
        assert_eq!(bytes(again, 0, 1).await, &data[..1]);

        // Replaced under its key (a new file renamed over it): located again.
        let next = d.path().join("next");
        std::fs::write(&next, b"another original").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        let replaced = open(&located, "v1", at.clone(), locate)
            .await
            .expect("local");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(bytes(replaced, 0, 7).await, b"another");

        // Deleted: located again, and nothing is found.
        std::fs::remove_file(&path).expect("remove");
        let gone = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            None
        };
        assert!(open(&located, "v1", at.clone(), gone).await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(located.is_empty(), "a gone blob is forgotten");
        assert!(open(&located, "v1", at, gone).await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 4, "and asked for again");
    }

    #[tokio::test]
    async fn an_original_elsewhere_is_read_through_read_range() {
        let d = dir();
        let path = d.path().join("original");
        std::fs::write(&path, b"0123456789").expect("write");
        let located = Located::default();
        let calls = AtomicUsize::new(0);

        let at: Arc<Path> = path.as_path().into();
        // Another host's file, or another file here: other identity.
        let mut elsewhere = located_at(&path);
        elsewhere.inode ^= 1;
        let other = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Some(elsewhere.clone())
        };
        assert!(open(&located, "v1", at.clone(), other).await.is_none());
        assert!(open(&located, "v1", at.clone(), other).await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "remembered as elsewhere");

        // Streaming keeps no files: elsewhere too.
        let none = || async { Some(LocatedFile::default()) };
        assert!(open(&located, "v2", at.clone(), none).await.is_none());
        // The gateway opens only its own store's file, never the one
        // streaming names: here its own has gone.
        let named = located_at(&path);
        let other_path: Arc<Path> = d.path().join("v3").into();
        assert!(
            open(&located, "v3", other_path, || async { Some(named) })
                .await
                .is_none()
        );
        assert_eq!(located.len(), 3);
    }

    #[tokio::test]
    async fn a_file_that_shrank_fails_the_body() {
        let d = dir();
        let path = d.path().join("original");
        std::fs::write(&path, vec![1u8; 100]).expect("write");
        let located = Located::default();
        let original = open(&located, "v1", path.as_path().into(), || async {
            Some(located_at(&path))
        })
        .await
        .expect("local");
        // Truncated in place after the open (the store never does this).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(10)
            .expect("truncate");
        let err = body(original, 0, 100).collect().await.expect_err("short");
        assert!(err.to_string().contains("short read"), "{err}");
    }

    #[test]
    fn the_memory_is_bounded() {
        let located = Located::default();
        for i in 0..=MAX_ENTRIES {
            located.put(&format!("v{i}"), Place::Elsewhere);
        }
        assert!(located.len() <= MAX_ENTRIES);
        assert!(!located.is_empty());
    }
}
