//! The lazy chunk stream behind ReadRange: the next chunk (<= 1 MiB) is read
//! only when the previous one has been taken, so memory stays one chunk deep.

use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};

use super::{CHUNK_BYTES, StreamingError};
use crate::blob::local::{self, FileId};
use crate::blob::{BlobError, BlobStore, ReadStream};
use crate::proto::DataChunk;
use crate::rt;

/// Where the bytes come from.
enum Source {
    /// The store's own local file, opened once for the whole stream (the
    /// descriptor pins the blob even if it is replaced meanwhile).
    File(std::fs::File),
    /// The store's reads (stores without local files), each of up to
    /// [`CHUNK_BYTES`], their pieces passed on as they come.
    Store {
        blobs: Arc<dyn BlobStore>,
        key: String,
        /// The read under way, and where its bytes end.
        reading: Option<(ReadStream, u64)>,
    },
}

/// An opened original, positioned for a range.
pub(super) struct Opened {
    source: Source,
    size: u64,
    /// The range opened for: its start and length (0: to the end).
    offset: u64,
    length: u64,
}

fn io_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BlobError {
    BlobError::Io(std::io::Error::other(e))
}

/// Opens the blob under `key` for a range from `offset`: its local file
/// where the store has one; else the read of the range's first chunk (of
/// at most `length` bytes, 0: to the end) starts now, with the blob's
/// size.
///
/// # Errors
/// [`BlobError::NotFound`] when nothing is stored there;
/// [`BlobError::OutOfRange`] from a store read past the end; I/O failures.
pub(super) async fn open(
    blobs: &Arc<dyn BlobStore>,
    key: &str,
    offset: u64,
    length: u64,
) -> Result<Opened, BlobError> {
    let Some(path) = blobs.local_path(key) else {
        let want = usize::try_from(length)
            .ok()
            .filter(|&l| l > 0)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let (pieces, size) = blobs.read_stream(key, offset, want).await?;
        let until = offset.saturating_add(want as u64).min(size);
        return Ok(Opened {
            source: Source::Store {
                blobs: blobs.clone(),
                key: key.to_owned(),
                reading: Some((pieces, until)),
            },
            size,
            offset,
            length,
        });
    };
    let owned = key.to_owned();
    rt::blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| not_found(e, &owned))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(BlobError::NotFound(owned.clone()));
        }
        Ok(Opened {
            size: meta.len(),
            source: Source::File(file),
            offset,
            length,
        })
    })
    .await
    .map_err(io_error)?
}

/// Where the blob under `key` lies on this host: its absolute path and
/// identity; `None` when the store keeps no local files.
///
/// # Errors
/// [`BlobError::NotFound`] when nothing is stored there; I/O failures.
pub(super) async fn locate(
    blobs: &Arc<dyn BlobStore>,
    key: &str,
) -> Result<Option<(PathBuf, FileId)>, BlobError> {
    let Some(path) = blobs.local_path(key) else {
        blobs.size(key).await?;
        return Ok(None);
    };
    let owned = key.to_owned();
    rt::blocking(move || {
        let meta = std::fs::metadata(&path).map_err(|e| not_found(e, &owned))?;
        if !meta.is_file() {
            return Err(BlobError::NotFound(owned));
        }
        let path = std::fs::canonicalize(&path).map_err(|e| not_found(e, &owned))?;
        Ok(Some((path, FileId::of(&meta))))
    })
    .await
    .map_err(io_error)?
}

fn not_found(e: std::io::Error, key: &str) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NotFound(key.to_owned())
    } else {
        BlobError::Io(e)
    }
}

impl Opened {
    /// The blob's size.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// The chunks of the range opened for, `[offset, offset + length)`
    /// (`length` 0: to the end; truncated at the end). An empty blob read
    /// from 0 yields one empty last chunk.
    ///
    /// # Errors
    /// [`StreamingError::OutOfRange`] when `offset` is at or past the end.
    pub(super) fn chunks(
        self,
    ) -> Result<impl Stream<Item = Result<DataChunk, tonic::Status>> + Send + 'static, StreamingError>
    {
        let Self {
            source,
            size,
            offset,
            length,
        } = self;
        if offset > size || (offset == size && size > 0) {
            return Err(StreamingError::OutOfRange { offset, size });
        }
        let end = if length == 0 {
            size
        } else {
            offset.saturating_add(length).min(size)
        };
        let state = Cursor {
            source: Some(source),
            pos: offset,
            end,
            size,
            // The stream is polled after the handler returned, outside the
            // call's task-local request id: an error names the one it had.
            request_id: crate::rt::trace::request_id(),
        };
        Ok(futures::stream::unfold(state, Cursor::next))
    }
}

/// A stream's position; `source` is `None` once it has ended.
struct Cursor {
    source: Option<Source>,
    pos: u64,
    end: u64,
    size: u64,
    request_id: Option<String>,
}

impl Cursor {
    fn failed(&self, e: impl Into<StreamingError>) -> tonic::Status {
        crate::error::status_for(&e.into(), self.request_id.as_deref())
    }

    async fn next(mut self) -> Option<(Result<DataChunk, tonic::Status>, Self)> {
        let source = self.source.take()?;
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(CHUNK_BYTES);
        let read = match source {
            // An empty range (of an empty blob) is one empty last chunk.
            source if want == 0 => Ok((source, bytes::Bytes::new())),
            Source::File(file) => match local::read_chunk(file, self.pos, want).await {
                Ok((file, data)) if data.len() == want => Ok((Source::File(file), data.into())),
                Ok((_, data)) => Err(io_error(format!(
                    "short read at {} of the original: {} of {want} bytes (changed underneath?)",
                    self.pos,
                    data.len()
                ))),
                Err(e) => Err(BlobError::Io(e)),
            },
            Source::Store {
                blobs,
                key,
                reading,
            } => Self::piece(self.pos, blobs, key, reading, want).await,
        };
        let (source, data) = match read {
            Ok(ok) => ok,
            Err(e) => return Some((Err(self.failed(e)), self)),
        };
        let offset = self.pos;
        self.pos += data.len() as u64;
        let last = self.pos >= self.end;
        if !last {
            self.source = Some(source);
        }
        let chunk = DataChunk {
            offset,
            data,
            total_size_bytes: self.size,
            last,
        };
        Some((Ok(chunk), self))
    }

    /// The next piece from the store at `pos` (not empty): from the read
    /// under way, or from a new one of `want` bytes.
    async fn piece(
        pos: u64,
        blobs: Arc<dyn BlobStore>,
        key: String,
        reading: Option<(ReadStream, u64)>,
        want: usize,
    ) -> Result<(Source, bytes::Bytes), BlobError> {
        let (mut pieces, until) = match reading {
            Some(reading) => reading,
            None => {
                let (pieces, _) = blobs.read_stream(&key, pos, want).await?;
                (pieces, pos + want as u64)
            }
        };
        loop {
            let Some(piece) = pieces.next().await else {
                return Err(io_error(format!(
                    "short read at {} of the original: {} bytes missing (changed underneath?)",
                    pos,
                    until - pos
                )));
            };
            let piece = piece?;
            if piece.is_empty() {
                continue;
            }
            let data = piece.slice(..piece.len().min((until - pos) as usize));
            let done = pos + data.len() as u64 >= until;
            let reading = (!done).then_some((pieces, until));
            return Ok((
                Source::Store {
                    blobs,
                    key,
                    reading,
                },
                data,
            ));
        }
    }
}
