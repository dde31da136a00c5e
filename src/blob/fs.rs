//! Blobs as files under a root directory: `<root>/blobs/<key>`. A new blob
//! is written to `<root>/tmp/`, fsynced, then renamed into place (and the
//! directory fsynced), so readers see either nothing or the whole blob.
//! Leftover temporary files (a crash mid-write) are removed on open. A
//! blob's modification time is the moment it was committed.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobError, BlobMeta, BlobStore, BlobWriter, MAX_LIST, MAX_READ, check_key};
use crate::rt;

/// A blob store in a directory.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    rt::blocking(f)
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
        .map_err(BlobError::Io)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl FsBlobStore {
    /// Opens (creating) the store at `root` and clears unfinished writes.
    ///
    /// # Errors
    /// The directories cannot be created or cleaned.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join("blobs").join(key))
    }

    fn not_found(key: &str, e: std::io::Error) -> BlobError {
        if e.kind() == std::io::ErrorKind::NotFound {
            BlobError::NotFound(key.to_owned())
        } else {
            BlobError::Io(e)
        }
    }

    fn temp(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{}.part", rt::random_hex128()))
    }
}

/// Makes `file` (a finished temporary file) durable, its modification time
/// now: a listing then shows when it was committed, not when its first
/// bytes came (what the orphan sweep's grace period is measured from).
fn finish(file: &std::fs::File) -> std::io::Result<()> {
    file.set_modified(rt::system_now())?;
    file.sync_all()
}

/// Moves the finished temporary file `tmp` to `dest` durably.
fn install(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(dir)?;
    std::fs::rename(tmp, dest)?;
    sync_dir(dir)
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        let path = self.temp();
        let p = path.clone();
        let file = blocking(move || std::fs::File::create_new(p)).await?;
        Ok(Box::new(FsWriter {
            file: Some(file),
            path,
            store: self.clone(),
        }))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BlobError> {
        let dest = self.path(key)?;
        let tmp = self.temp();
        blocking(move || {
            let written = std::fs::File::create_new(&tmp).and_then(|mut f| {
                f.write_all(&data)?;
                finish(&f)?;
                drop(f);
                install(&tmp, &dest)
            });
            // A full disk or a failed write leaves nothing behind.
            written.inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })
        .await
    }

    async fn size(&self, key: &str) -> Result<u64, BlobError> {
        let path = self.path(key)?;
        let meta = blocking(move || std::fs::metadata(path))
            .await
            .map_err(|e| match e {
                BlobError::Io(e) => Self::not_found(key, e),
                e => e,
            })?;
        if !meta.is_file() {
            return Err(BlobError::NotFound(key.to_owned()));
        }
        Ok(meta.len())
    }

    async fn read(&self, key: &str, offset: u64, len: usize) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        let len = len.min(MAX_READ);
        let owned = key.to_owned();
        blocking(move || {
            let mut f = std::fs::File::open(path)?;
            let size = f.metadata()?.len();
            if !f.metadata()?.is_file() {
                return Ok(Err(BlobError::NotFound(owned)));
            }
            if offset > size || (offset == size && size > 0) {
                return Ok(Err(BlobError::OutOfRange {
                    key: owned,
                    offset,
                    size,
                }));
            }
            let want = usize::try_from((size - offset).min(len as u64)).unwrap_or(len);
            let mut buf = vec![0; want];
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut buf)?;
            Ok(Ok(Bytes::from(buf)))
        })
        .await
        .map_err(|e| match e {
            BlobError::Io(e) => Self::not_found(key, e),
            e => e,
        })?
    }

    async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        blocking(move || {
            let mut removed = false;
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
                removed = true;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if path.exists() => return Err(e),
                Err(_) => {}
            }
            Ok(removed)
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>, BlobError> {
        let dir = self.path(prefix)?;
        let (prefix, after) = (prefix.to_owned(), after.map(str::to_owned));
        let limit = limit.min(MAX_LIST);
        blocking(move || {
            let mut page = Vec::new();
            walk(&dir, &prefix, after.as_deref(), limit, &mut page)?;
            Ok(page)
        })
        .await
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    /// One part: a second name for its file (a hard link; blobs are never
    /// changed in place, only replaced, so the two cannot diverge); more:
    /// the files copied by the kernel (`std::io::copy` between files uses
    /// `copy_file_range`, never a buffer of ours). Either way through a
    /// temporary file renamed into place, as a commit.
    async fn compose(&self, parts: &[String], key: &str) -> Result<(), BlobError> {
        let dest = self.path(key)?;
        let paths = parts
            .iter()
            .map(|p| self.path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let tmp = self.temp();
        let names = parts.to_vec();
        blocking(move || {
            let joined = join(&paths, &names, &tmp).and_then(|found| {
                if found.is_ok() {
                    install(&tmp, &dest)?;
                }
                Ok(found)
            });
            if !matches!(joined, Ok(Ok(()))) {
                let _ = std::fs::remove_file(&tmp);
            }
            joined
        })
        .await?
    }
}

/// Writes the files `paths` (the blobs `names`), joined, as the new file
/// `tmp`, durable and dated now; `Ok(Err(NotFound))` names a missing part.
fn join(paths: &[PathBuf], names: &[String], tmp: &Path) -> std::io::Result<Result<(), BlobError>> {
    let missing = |i: usize, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(Err(BlobError::NotFound(names[i].clone())))
        } else {
            Err(e)
        }
    };
    if let [only] = paths {
        if let Err(e) = std::fs::hard_link(only, tmp) {
            return missing(0, e);
        }
        let file = std::fs::File::options().write(true).open(tmp)?;
        finish(&file)?;
        return Ok(Ok(()));
    }
    let mut out = std::fs::File::create_new(tmp)?;
    for (i, path) in paths.iter().enumerate() {
        let mut part = match std::fs::File::open(path) {
            Ok(part) => part,
            Err(e) => return missing(i, e),
        };
        std::io::copy(&mut part, &mut out)?;
    }
    finish(&out)?;
    Ok(Ok(()))
}

/// Adds to `page` the blobs under `dir` (whose key is `key`) that sort
/// after `after`, in key order, until it holds `limit`. Entries whose names
/// are no key segment (nothing the store wrote) and symbolic links are
/// passed over; an entry removed meanwhile is too.
fn walk(
    dir: &Path,
    key: &str,
    after: Option<&str>,
    limit: usize,
    page: &mut Vec<BlobMeta>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() || check_key(&name).is_err() {
            continue;
        }
        // A directory's keys all start `name/`: sorting it as `name/`
        // puts every key of the listing in byte order.
        let sort = if kind.is_dir() {
            format!("{name}/")
        } else {
            name.clone()
        };
        children.push((sort, name, kind.is_dir()));
    }
    children.sort_unstable();
    for (_, name, is_dir) in children {
        if page.len() >= limit {
            break;
        }
        let child = format!("{key}/{name}");
        // Deeper or longer than any key: nothing the store wrote.
        if check_key(&child).is_err()
            || (is_dir && child.split('/').count() >= super::MAX_KEY_SEGMENTS)
        {
            continue;
        }
        if is_dir {
            let inner = format!("{child}/");
            // Every key under it sorts before `after` unless `after` is
            // inside it or before it.
            if after.is_some_and(|a| a > inner.as_str() && !a.starts_with(&inner)) {
                continue;
            }
            walk(&dir.join(&name), &child, after, limit, page)?;
        } else if after.is_none_or(|a| child.as_str() > a) {
            let meta = match std::fs::metadata(dir.join(&name)) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            page.push(BlobMeta {
                key: child,
                size: meta.len(),
                last_modified_ms: rt::unix_ms_of(meta.modified()?),
            });
        }
    }
    Ok(())
}

struct FsWriter {
    file: Option<std::fs::File>,
    path: PathBuf,
    store: FsBlobStore,
}

impl FsWriter {
    fn file(&mut self) -> Result<std::fs::File, BlobError> {
        self.file
            .take()
            .ok_or_else(|| BlobError::Io(std::io::Error::other("an earlier write failed")))
    }
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let mut file = self.file()?;
        let chunk = chunk.to_vec();
        let file = blocking(move || file.write_all(&chunk).map(|()| file)).await?;
        self.file = Some(file);
        Ok(())
    }

    async fn commit(mut self: Box<Self>, key: &str) -> Result<(), BlobError> {
        let dest = self.store.path(key)?;
        let file = self.file()?;
        let tmp = self.path.clone();
        blocking(move || {
            finish(&file)?;
            drop(file);
            install(&tmp, &dest)
        })
        .await
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Not committed (or the rename failed): the bytes are discarded.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-blob-{name}-{}", rt::random_hex128()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[tokio::test]
    async fn a_blob_is_visible_only_after_commit() {
        let root = dir("commit");
        let store = FsBlobStore::open(&root).expect("open");
        let mut w = store.create().await.expect("create");
        w.write(b"hello ").await.expect("write");
        w.write(b"world").await.expect("write");
        assert!(matches!(
            store.size("originals/v1").await,
            Err(BlobError::NotFound(_))
        ));
        w.commit("originals/v1").await.expect("commit");
        assert_eq!(store.size("originals/v1").await.expect("size"), 11);
        let part = store.read("originals/v1", 6, 100).await.expect("read");
        assert_eq!(&part[..], b"world");
        assert!(matches!(
            store.read("originals/v1", 11, 1).await,
            Err(BlobError::OutOfRange { size: 11, .. })
        ));
        assert_eq!(std::fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn an_abandoned_write_leaves_nothing() {
        let root = dir("abandon");
        let store = FsBlobStore::open(&root).expect("open");
        let mut w = store.create().await.expect("create");
        w.write(b"partial").await.expect("write");
        drop(w);
        assert_eq!(std::fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
        // A crash leaves a temp file behind; reopening clears it.
        std::fs::write(root.join("tmp").join("x.part"), b"junk").expect("junk");
        let _store = FsBlobStore::open(&root).expect("reopen");
        assert_eq!(std::fs::read_dir(root.join("tmp")).expect("tmp").count(), 0);
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn listings_page_in_key_order_with_commit_times() {
        let root = dir("list");
        let store = FsBlobStore::open(&root).expect("open");
        let keys = [
            "hls/a/480p/seg_00001.ts",
            "hls/a/master.m3u8",
            "hls/a-b/x",
            "hls/a.b",
            "hls/a0",
            "hls/b/720p/index.m3u8",
        ];
        let before = rt::unix_ms() - 1000;
        for key in keys.iter().rev() {
            store
                .put(key, Bytes::from(key.as_bytes().to_vec()))
                .await
                .expect("put");
        }
        // Bytes the store never wrote are no blobs.
        std::fs::write(root.join("blobs/hls/not a key"), b"x").expect("stray file");
        store
            .put("originals/v", Bytes::from_static(b"1"))
            .await
            .expect("put");
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let all = store.list("hls", None, 100).await.expect("list");
        let names: Vec<&str> = all.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(names, sorted, "every key under hls/, in byte order");
        for m in &all {
            assert_eq!(m.size, m.key.len() as u64);
            assert!(m.last_modified_ms >= before, "{m:?}");
        }
        // Pages of two, each starting after the last key of the one before.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.list("hls", after.as_deref(), 2).await.expect("page");
            paged.extend(page.iter().map(|m| m.key.clone()));
            if page.len() < 2 {
                break;
            }
            after = page.last().map(|m| m.key.clone());
        }
        assert_eq!(paged, sorted);
        // A start inside a directory, between two of its keys.
        let tail = store
            .list("hls", Some("hls/a/480p"), 100)
            .await
            .expect("list");
        let tail: Vec<&str> = tail.iter().map(|m| m.key.as_str()).collect();
        let want: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|k| *k > "hls/a/480p")
            .collect();
        assert_eq!(tail, want);
        let none = store.list("hls", Some("hls/z"), 100).await.expect("list");
        assert!(none.is_empty());
        assert!(
            store
                .list("thumbs", None, 10)
                .await
                .expect("list")
                .is_empty()
        );
        assert!(matches!(
            store.list("../x", None, 10).await,
            Err(BlobError::BadKey(..))
        ));
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn delete_removes_a_tree_and_keys_cannot_escape() {
        let root = dir("delete");
        let store = FsBlobStore::open(&root).expect("open");
        store
            .put("hls/v/a/x.ts", Bytes::from_static(b"1"))
            .await
            .expect("put");
        store
            .put("hls/v/master.m3u8", Bytes::from_static(b"2"))
            .await
            .expect("put");
        assert!(store.delete("hls/v").await.expect("delete"));
        assert!(!store.delete("hls/v").await.expect("delete again"));
        assert!(matches!(
            store.put("../escape", Bytes::new()).await,
            Err(BlobError::BadKey(..))
        ));
        let _ = std::fs::remove_dir_all(root);
    }
}
