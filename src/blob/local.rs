//! Blob files read directly, for the backends that keep them on the local
//! file system: ReadRange in streaming, and the gateway sending an original
//! itself when it shares streaming's store (LocateOriginal).
//!
//! Opening and reading can wait on the disk, so it is done on the blocking
//! pool; but a hop there costs about a tenth of a 1 MiB range's time. So
//! the `*_cached` forms first try without waiting, from the kernel's caches
//! only (`openat2` with `RESOLVE_CACHED`, `preadv2` with `RWF_NOWAIT`), and
//! leave to the blocking pool only what they could not do.

use std::os::unix::fs::MetadataExt as _;

/// What tells a file apart from another one at the same path: a blob
/// replaced under its key (a new file renamed over it) differs in inode and
/// time, a file on another host in device, inode or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// `st_dev`.
    pub device: u64,
    /// `st_ino`.
    pub inode: u64,
    /// The size in bytes.
    pub size: u64,
    /// The last modification, in nanoseconds since the Unix epoch.
    pub modified_ns: i64,
}

impl FileId {
    /// The identity of the file `meta` describes.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// Opens `path` when it is a regular file whose identity is `id`.
///
/// # Errors
/// The open's error; [`std::io::ErrorKind::InvalidData`] when the file is
/// another one.
pub fn open_checked(path: &std::path::Path, id: FileId) -> std::io::Result<std::fs::File> {
    checked(std::fs::File::open(path)?, id)
}

/// [`open_checked`] without waiting on the disk: `Ok(None)` when the path
/// is not all in the kernel's lookup cache (or the kernel can't tell, being
/// older than Linux 5.12).
///
/// # Errors
/// As [`open_checked`].
pub fn open_checked_cached(
    path: &std::path::Path,
    id: FileId,
) -> std::io::Result<Option<std::fs::File>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => checked(fd.into(), id).map(Some),
        // AGAIN: not cached; INVAL, NOSYS: an older kernel; PERM: a
        // seccomp filter that doesn't know openat2 (older container runtimes).
        Err(Errno::AGAIN | Errno::INVAL | Errno::NOSYS | Errno::PERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn checked(file: std::fs::File, id: FileId) -> std::io::Result<std::fs::File> {
    let meta = file.metadata()?;
    if meta.is_file() && FileId::of(&meta) == id {
        Ok(file)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not the file located",
        ))
    }
}

/// `want` bytes of `file` from `offset`: what the page cache holds read
/// here, the rest on the blocking pool. The file is handed back with them.
///
/// # Errors
/// The read's error; [`std::io::ErrorKind::UnexpectedEof`] when the file
/// ends first (it changed underneath: blobs are never written in place).
pub async fn read_chunk<F>(file: F, offset: u64, want: usize) -> std::io::Result<(F, Vec<u8>)>
where
    F: std::borrow::Borrow<std::fs::File> + Send + 'static,
{
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; want];
    let got = read_cached(file.borrow(), offset, &mut buf);
    if got == want {
        return Ok((file, buf));
    }
    crate::rt::blocking(move || {
        match file
            .borrow()
            .read_exact_at(&mut buf[got..], offset + got as u64)
        {
            Ok(()) => Ok((file, buf)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(std::io::Error::new(
                e.kind(),
                format!(
                    "short read at {offset}: the file ends before byte {} (changed underneath?)",
                    offset + want as u64
                ),
            )),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Reads into `buf` from `offset` what the page cache holds of it, without
/// waiting on the disk; returns how many bytes (0 when none are cached, at
/// the end of the file, or when the file system can't read without
/// waiting). Errors are left to the blocking read of the rest.
pub fn read_cached(file: &std::fs::File, offset: u64, buf: &mut [u8]) -> usize {
    use rustix::io::{ReadWriteFlags, preadv2};
    let mut filled = 0;
    while filled < buf.len() {
        let mut slice = [std::io::IoSliceMut::new(&mut buf[filled..])];
        match preadv2(
            file,
            &mut slice,
            offset + filled as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) if n > 0 => filled += n,
            _ => break,
        }
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_file_is_another_file() {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let path = dir.path().join("blob");
        std::fs::write(&path, b"0123456789").expect("write");
        let id = FileId::of(&std::fs::metadata(&path).expect("meta"));
        let file = open_checked(&path, id).expect("the same file opens");
        let (file, data) = read_chunk(file, 3, 4).await.expect("read");
        assert_eq!(data, b"3456");
        let err = read_chunk(file, 8, 4).await.expect_err("past the end");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("short read at 8"), "{err}");

        // Replaced as the store replaces a blob: a new file renamed over it.
        let next = dir.path().join("next");
        std::fs::write(&next, b"0123456789").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        let err = open_checked(&path, id).expect_err("another file");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let err = open_checked_cached(&path, id).expect_err("another file");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).expect("remove");
        let err = open_checked(&path, id).expect_err("gone");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
