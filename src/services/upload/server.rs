//! UploadService over gRPC: checks the metadata chunk, streams the data
//! chunks into a new blob while hashing and counting, and only after the
//! blob is committed and the video recorded announces FileUploaded.

use crate::middleware::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use super::error::UploadError;
use super::records::Records;
use super::sweep::Committing;
use crate::blob::{BlobError, BlobStore};
use crate::bus::EventBus;
use crate::bus::events::{FileUploaded, Payload};
use crate::client::ClientPool;
use crate::error::Classify as _;
use crate::proto::upload_chunk::Payload as Chunk;
use crate::proto::upload_service_server::UploadService;
use crate::proto::{
    AdoptPartsRequest, BlobPart, CreateVideoRequest, DeleteUploadRequest, DeleteUploadResponse,
    DeleteVideoRequest, GetUploadRequest, GetUploadResponse, ListUploadsRequest,
    ListUploadsResponse, UploadChunk, UploadInfo, UploadMetadata, UploadResponse,
};
use crate::rt;
use crate::services::media;
use crate::services::upload::UPLOAD_IDLE_TIMEOUT;

/// Largest data chunk.
pub const MAX_CHUNK: usize = 1 << 20;
/// Owner of uploads that name no user.
pub const ANONYMOUS: &str = "anonymous";
/// gRPC metadata header naming the uploading user (set by the gateway after
/// checking the user's bearer token; only our services can call upload).
pub const USER_ID_HEADER: &str = "x-user-id";
/// Attempts at announcing FileUploaded before the upload is undone.
const PUBLISH_ATTEMPTS: u32 = 3;
/// Longest the steps after the blob's commit (record the video, record the
/// upload, announce it) may take before the upload is undone; the orphan
/// sweep's grace must be longer when upload instances share a blob store.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of the catalog's CreateVideo within the commit.
const CREATE_VIDEO_TIMEOUT: Duration = Duration::from_secs(20);

/// The gRPC face of the upload service.
#[derive(Clone)]
pub struct UploadServer {
    store: Records,
    blobs: Arc<dyn BlobStore>,
    bus: Arc<dyn EventBus>,
    pool: ClientPool,
    max_size: u64,
    committing: Committing,
    metrics: Metrics,
}

impl std::fmt::Debug for UploadServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadServer")
            .field("max_size", &self.max_size)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> UploadError {
    UploadError::Invalid(msg.into())
}

/// The next chunk of an upload stream; a stream that sends nothing for
/// [`UPLOAD_IDLE_TIMEOUT`] is cut (the call's own deadline may be hours).
async fn next_chunk(
    stream: &mut Streaming<UploadChunk>,
) -> Result<Option<UploadChunk>, UploadError> {
    rt::timeout(UPLOAD_IDLE_TIMEOUT, stream.message())
        .await
        .map_err(|rt::Elapsed| UploadError::Idle(UPLOAD_IDLE_TIMEOUT))?
        .map_err(UploadError::Stream)
}

/// Checks a file name: 1..=255 bytes, no `/`, `\`, NUL or other control
/// characters, not `.` or `..`.
///
/// # Errors
/// What is wrong, for an INVALID_ARGUMENT status.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err("file_name: 1..=255 bytes".into());
    }
    if name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err("file_name: no '/', '\\', NUL or control characters, not '.' or '..'".into());
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks the metadata chunk against `max_size`.
fn check_metadata(m: &UploadMetadata, max_size: u64) -> Result<(), UploadError> {
    check_file_name(&m.file_name).map_err(invalid)?;
    if !m.content_type.starts_with("video/") || m.content_type.len() > 127 {
        return Err(invalid("content_type: video/*, at most 127 bytes"));
    }
    if m.size_bytes > max_size {
        return Err(UploadError::TooLarge(format!(
            "size_bytes {} is over the limit of {max_size} bytes",
            m.size_bytes
        )));
    }
    if !m.sha256_hex.is_empty() && !is_sha256_hex(&m.sha256_hex) {
        return Err(invalid("sha256_hex: 64 lower-case hex digits, or empty"));
    }
    if m.title.len() > 200 || m.title.chars().any(char::is_control) {
        return Err(invalid("title: at most 200 bytes, no control characters"));
    }
    if m.description.len() > 5000 {
        return Err(invalid("description: at most 5000 bytes"));
    }
    if crate::proto::Visibility::try_from(m.visibility).is_err() {
        return Err(invalid("visibility: unknown value"));
    }
    if !m.idempotency_key.is_empty() && !media::is_id(&m.idempotency_key) {
        return Err(invalid(
            "idempotency_key: 1..=64 chars of [A-Za-z0-9_-], or empty",
        ));
    }
    Ok(())
}

/// The uploading user named by [`USER_ID_HEADER`] if it is a valid id,
/// else [`ANONYMOUS`].
fn owner_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(USER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| media::is_id(id))
        .map_or_else(|| ANONYMOUS.to_owned(), str::to_owned)
}

/// The title of a video uploaded as `file_name` without one: the name,
/// cut to 200 bytes.
fn title_of(m: &UploadMetadata) -> String {
    if !m.title.is_empty() {
        return m.title.clone();
    }
    crate::text::prefix(&m.file_name, 200).to_owned()
}

fn response(u: &UploadInfo, deduplicated: bool) -> UploadResponse {
    UploadResponse {
        upload_id: u.upload_id.clone(),
        video_id: u.video_id.clone(),
        blob_key: u.blob_key.clone(),
        size_bytes: u.size_bytes,
        sha256_hex: u.sha256_hex.clone(),
        created_at_ms: u.created_at_ms,
        deduplicated,
    }
}

impl UploadServer {
    /// A server storing in `blobs`, recording in `store`, creating videos
    /// through `pool` and announcing on `bus`; uploads up to `max_size`,
    /// marking each in `committing` while it commits.
    #[must_use]
    pub fn new(
        store: Records,
        blobs: Arc<dyn BlobStore>,
        bus: Arc<dyn EventBus>,
        pool: ClientPool,
        max_size: u64,
        committing: Committing,
    ) -> Self {
        Self {
            store,
            blobs,
            bus,
            pool,
            max_size,
            committing,
            metrics: Metrics::default(),
        }
    }

    /// Records uploads (bytes stored, durations) in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Receives the data chunks into a committed blob at `key`; returns
    /// its size and hash. On any error nothing is left stored.
    async fn receive(
        &self,
        stream: &mut Streaming<UploadChunk>,
        meta: &UploadMetadata,
        key: &str,
    ) -> Result<(u64, String), UploadError> {
        let limit = if meta.size_bytes > 0 {
            meta.size_bytes
        } else {
            self.max_size
        };
        let mut writer = self.blobs.create_for(key).await?;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        while let Some(chunk) = next_chunk(stream).await? {
            let data = match chunk.payload {
                Some(Chunk::Data(data)) => data,
                Some(Chunk::Metadata(_)) => return Err(invalid("metadata after the first chunk")),
                None => return Err(invalid("a chunk without payload")),
            };
            if data.is_empty() || data.len() > MAX_CHUNK {
                return Err(invalid("data chunks are 1..=1048576 bytes"));
            }
            total += data.len() as u64;
            if total > limit {
                return Err(if limit == self.max_size {
                    UploadError::TooLarge(format!(
                        "upload is over the limit of {} bytes",
                        self.max_size
                    ))
                } else {
                    invalid(format!("more bytes than the declared size_bytes {limit}"))
                });
            }
            hasher.update(&data);
            writer.write_bytes(data).await?;
        }
        if total == 0 {
            return Err(invalid("empty upload: no data chunks"));
        }
        if meta.size_bytes > 0 && total != meta.size_bytes {
            return Err(invalid(format!(
                "received {total} bytes, declared size_bytes {}",
                meta.size_bytes
            )));
        }
        let sha = media::hex(&hasher.finalize());
        if !meta.sha256_hex.is_empty() && sha != meta.sha256_hex {
            return Err(invalid(format!(
                "sha256_hex mismatch: received {sha}, declared {}",
                meta.sha256_hex
            )));
        }
        writer.commit(key).await?;
        Ok((total, sha))
    }

    /// Reads the parts (counting, hashing) and joins them into a committed
    /// blob at `key`, the two at once (the join is the store's own copy,
    /// or none); returns its size and hash. On any error nothing is left
    /// stored. The parts were checked ([`check_parts`]).
    async fn join(&self, parts: &[BlobPart], key: &str) -> Result<(u64, String), UploadError> {
        let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
        let (hashed, joined) =
            futures::future::join(self.hash_parts(parts), self.blobs.compose(&keys, key)).await;
        match (hashed, joined.map_err(missing_part)) {
            (Ok(hashed), Ok(())) => Ok(hashed),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), joined) => {
                if joined.is_ok()
                    && let Err(gone) = self.blobs.delete(key).await
                {
                    tracing::warn!(key, error = %gone, "a joined original not removed (the orphan sweep will)");
                }
                Err(e)
            }
        }
    }

    /// The parts' total size and SHA-256, each checked against its
    /// declared size.
    async fn hash_parts(&self, parts: &[BlobPart]) -> Result<(u64, String), UploadError> {
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        for part in parts {
            let stored = self.blobs.size(&part.key).await.map_err(missing_part)?;
            if stored != part.size_bytes {
                return Err(invalid(format!(
                    "part {}: {stored} bytes stored, {} declared",
                    part.key, part.size_bytes
                )));
            }
            let mut at = 0;
            while at < stored {
                let data = self
                    .blobs
                    .read(&part.key, at, ADOPT_READ)
                    .await
                    .map_err(missing_part)?;
                if data.is_empty() {
                    return Err(missing_part(BlobError::NotFound(part.key.clone())));
                }
                at += data.len() as u64;
                // Hashing 4 MiB takes milliseconds: off the async workers.
                hasher = rt::blocking(move || {
                    hasher.update(&data);
                    hasher
                })
                .await?;
            }
            total += stored;
        }
        Ok((total, media::hex(&hasher.finalize())))
    }

    /// Removes what a failed upload of `video_id` left (best effort): its
    /// video record (when it was, or may have been, created), its original
    /// and its upload records.
    async fn undo(&self, video_id: &str, video_created: bool) {
        if video_created && let Ok(mut metadata) = self.pool.metadata().await {
            let req = DeleteVideoRequest {
                video_id: video_id.to_owned(),
            };
            match metadata.delete_video(req).await {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => {
                    tracing::warn!(video = video_id, error = %e, "undo: video record not deleted");
                }
            }
        }
        if let Err(e) = self.blobs.delete(&media::original_key(video_id)).await {
            tracing::warn!(video = video_id, error = %e, "undo: original not deleted");
        }
        let id = video_id.to_owned();
        if let Err(e) = self.store.delete_video(&id).await {
            tracing::warn!(video = video_id, error = %e, "undo: upload record not deleted");
        }
    }

    async fn publish(&self, payload: &FileUploaded) -> Result<(), UploadError> {
        let event = payload.to_event("upload").map_err(UploadError::Encode)?;
        let mut last = None;
        for attempt in 0..PUBLISH_ATTEMPTS {
            if attempt > 0 {
                rt::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match self.bus.publish(&event).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(UploadError::Bus(
            last.unwrap_or(crate::bus::BusError::Closed),
        ))
    }

    /// Steps 1 and 2 of the commit (ARCHITECTURE.md, "The upload commit
    /// order"), then 3 to 5 on a task of their own, bounded by
    /// [`COMMIT_TIMEOUT`]: a client that goes away meanwhile cannot leave
    /// a commit (or its undo) half done. From before the blob exists until
    /// the record is written or the upload undone, the video is marked as
    /// being committed, so the orphan sweep leaves its blob alone.
    async fn store_upload(
        &self,
        source: Source<'_>,
        meta: UploadMetadata,
        owner: String,
    ) -> Result<UploadInfo, UploadError> {
        let video_id = rt::random_hex128();
        let committing = self.committing.begin(&video_id);
        let key = media::original_key(&video_id);
        let (size, sha) = match source {
            Source::Stream(stream) => self.receive(stream, &meta, &key).await?,
            Source::Parts(parts) => self.join(parts, &key).await?,
        };
        let this = self.clone();
        // In the call's trace: the catalog call and FileUploaded continue it.
        let commit = rt::spawn(rt::trace::carry(async move {
            let _committing = committing;
            let received = Received {
                video_id,
                meta,
                owner,
                size,
                sha,
            };
            match rt::timeout(COMMIT_TIMEOUT, this.record(&received)).await {
                Ok(result) => result,
                Err(rt::Elapsed) => {
                    this.undo(&received.video_id, true).await;
                    Err(UploadError::CommitTimeout(COMMIT_TIMEOUT))
                }
            }
        }));
        commit.await?
    }

    /// Records the received video and announces it (steps 3 to 5); undoes
    /// it all on any failure.
    async fn record(&self, r: &Received) -> Result<UploadInfo, UploadError> {
        let video_id = &r.video_id;
        let key = media::original_key(video_id);
        let mut create = tonic::Request::new(CreateVideoRequest {
            video_id: video_id.clone(),
            owner_id: r.owner.clone(),
            title: title_of(&r.meta),
            description: r.meta.description.clone(),
            content_type: r.meta.content_type.clone(),
            size_bytes: r.size,
            sha256_hex: r.sha.clone(),
            visibility: r.meta.visibility,
        });
        // Within the commit's bound, so that the catalog never records the
        // video after the upload gave up on it.
        create.set_timeout(CREATE_VIDEO_TIMEOUT);
        let created = async {
            let mut metadata = self.pool.metadata().await?;
            metadata
                .create_video(create)
                .await
                .map_err(|s| UploadError::Metadata(crate::error::Upstream(s)))
        }
        .await;
        if let Err(e) = created {
            // A server fault leaves unknown whether the record was made.
            self.undo(video_id, e.kind().is_server_fault()).await;
            return Err(e);
        }
        let info = UploadInfo {
            upload_id: rt::random_hex128(),
            video_id: video_id.clone(),
            owner_id: r.owner.clone(),
            file_name: r.meta.file_name.clone(),
            content_type: r.meta.content_type.clone(),
            size_bytes: r.size,
            sha256_hex: r.sha.clone(),
            blob_key: key.clone(),
            created_at_ms: i64::try_from(rt::unix_ms()).unwrap_or(i64::MAX),
        };
        let record = info.clone();
        let idem = (!r.meta.idempotency_key.is_empty()).then(|| r.meta.idempotency_key.clone());
        let recorded = self
            .store
            .insert(record, idem)
            .await
            .map_err(UploadError::from);
        let announced = match recorded {
            Ok(()) => {
                let event = FileUploaded {
                    video_id: video_id.clone(),
                    blob_key: key,
                    size_bytes: r.size,
                    content_type: r.meta.content_type.clone(),
                    sha256_hex: r.sha.clone(),
                };
                self.publish(&event).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = announced {
            self.undo(video_id, true).await;
            return Err(e);
        }
        tracing::info!(video = %video_id, bytes = r.size, "upload stored");
        Ok(info)
    }
}

/// Where an upload's bytes come from.
enum Source<'a> {
    /// The data chunks of an Upload call.
    Stream(&'a mut Streaming<UploadChunk>),
    /// Parts already in the blob store (AdoptParts).
    Parts(&'a [BlobPart]),
}

/// The reads AdoptParts makes of its parts.
const ADOPT_READ: usize = 4 << 20;
/// Most parts AdoptParts takes (the gateway's tus limit).
pub const MAX_PARTS: usize = 10_000;

/// A part missing from this store is the caller's to resolve (its store
/// is not shared with this one): FAILED_PRECONDITION, naming the part.
fn missing_part(e: BlobError) -> UploadError {
    match e {
        BlobError::NotFound(key) => UploadError::PartMissing(key),
        e => UploadError::Blob(e),
    }
}

/// Checks AdoptParts' parts: 1..=[`MAX_PARTS`], valid keys under
/// `tus/<owner>/`, none empty, their total `meta.size_bytes` (which must
/// be given).
fn check_parts(parts: &[BlobPart], meta: &UploadMetadata, owner: &str) -> Result<(), UploadError> {
    if parts.is_empty() || parts.len() > MAX_PARTS {
        return Err(invalid(format!("parts: 1..={MAX_PARTS}")));
    }
    let prefix = format!("tus/{owner}/");
    let mut total: u64 = 0;
    for part in parts {
        if crate::blob::check_key(&part.key).is_err() || !part.key.starts_with(&prefix) {
            return Err(invalid(format!("parts: keys are blob keys under {prefix}")));
        }
        if part.size_bytes == 0 {
            return Err(invalid("parts: none empty"));
        }
        total = total.saturating_add(part.size_bytes);
    }
    if meta.size_bytes == 0 || total != meta.size_bytes {
        return Err(invalid(format!(
            "parts: {total} bytes in all, size_bytes {}",
            meta.size_bytes
        )));
    }
    Ok(())
}

impl UploadServer {
    /// The answer already given to `owner` for `meta`'s idempotency key.
    async fn deduplicated(
        &self,
        owner: &str,
        meta: &UploadMetadata,
    ) -> Result<Option<UploadResponse>, UploadError> {
        if meta.idempotency_key.is_empty() {
            return Ok(None);
        }
        let found = self.store.by_key(owner, &meta.idempotency_key).await?;
        Ok(found.map(|done| response(&done, true)))
    }

    /// Stores an upload from `source`, counted in the metrics.
    async fn stored(
        &self,
        source: Source<'_>,
        meta: UploadMetadata,
        owner: String,
    ) -> Result<Response<UploadResponse>, Status> {
        let started = rt::now();
        let stored = self.store_upload(source, meta, owner).await;
        self.metrics
            .upload_finished(stored.is_ok(), rt::now() - started);
        let info = stored?;
        self.metrics.upload_stored(info.size_bytes);
        Ok(Response::new(response(&info, false)))
    }
}

/// An upload whose blob is committed (steps 1 and 2 done).
struct Received {
    video_id: String,
    meta: UploadMetadata,
    owner: String,
    size: u64,
    sha: String,
}

#[tonic::async_trait]
impl UploadService for UploadServer {
    async fn upload(
        &self,
        req: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<UploadResponse>, Status> {
        let owner = owner_of(req.metadata());
        let mut stream = req.into_inner();
        let meta = match next_chunk(&mut stream).await? {
            Some(UploadChunk {
                payload: Some(Chunk::Metadata(m)),
            }) => m,
            Some(_) => return Err(invalid("the first chunk must carry the metadata").into()),
            None => return Err(invalid("empty upload stream").into()),
        };
        check_metadata(&meta, self.max_size)?;
        if let Some(done) = self.deduplicated(&owner, &meta).await? {
            return Ok(Response::new(done));
        }
        self.stored(Source::Stream(&mut stream), meta, owner).await
    }

    async fn adopt_parts(
        &self,
        req: Request<AdoptPartsRequest>,
    ) -> Result<Response<UploadResponse>, Status> {
        let owner = owner_of(req.metadata());
        let r = req.into_inner();
        let meta = r.metadata.ok_or_else(|| invalid("metadata: required"))?;
        check_metadata(&meta, self.max_size)?;
        if owner == ANONYMOUS {
            return Err(invalid("parts: the call names no user").into());
        }
        check_parts(&r.parts, &meta, &owner)?;
        if let Some(done) = self.deduplicated(&owner, &meta).await? {
            return Ok(Response::new(done));
        }
        self.stored(Source::Parts(&r.parts), meta, owner).await
    }

    async fn get_upload(
        &self,
        req: Request<GetUploadRequest>,
    ) -> Result<Response<GetUploadResponse>, Status> {
        let id = req.into_inner().upload_id;
        media::check_id("upload_id", &id).map_err(invalid)?;
        let found = self.store.get(&id).await.map_err(UploadError::from)?;
        let upload = found.ok_or(UploadError::NotFound(id))?;
        Ok(Response::new(GetUploadResponse {
            upload: Some(upload),
        }))
    }

    async fn delete_upload(
        &self,
        req: Request<DeleteUploadRequest>,
    ) -> Result<Response<DeleteUploadResponse>, Status> {
        let id = req.into_inner().upload_id;
        media::check_id("upload_id", &id).map_err(invalid)?;
        let found = self.store.get(&id).await.map_err(UploadError::from)?;
        let upload = found.ok_or_else(|| UploadError::NotFound(id.clone()))?;
        self.blobs
            .delete(&upload.blob_key)
            .await
            .map_err(UploadError::from)?;
        let deleted = self.store.delete(&id).await.map_err(UploadError::from)?;
        Ok(Response::new(DeleteUploadResponse { deleted }))
    }

    async fn list_uploads(
        &self,
        req: Request<ListUploadsRequest>,
    ) -> Result<Response<ListUploadsResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => 20,
            n if n <= 100 => n,
            _ => return Err(invalid("page_size: 1..=100").into()),
        };
        let owner = if r.owner_id.is_empty() {
            ANONYMOUS.to_owned()
        } else {
            r.owner_id
        };
        media::check_id("owner_id", &owner).map_err(invalid)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            let bad = || invalid("page_token: not a token from a previous page");
            let (at, id) = r.page_token.split_once('.').ok_or_else(bad)?;
            let at: i64 = at.parse().map_err(|_| bad())?;
            if r.page_token.len() > 512 || !media::is_id(id) {
                return Err(bad().into());
            }
            Some((at, id.to_owned()))
        };
        let uploads = self
            .store
            .list(owner, after, limit)
            .await
            .map_err(UploadError::from)?;
        let next_page_token = match uploads.last() {
            Some(u) if uploads.len() == limit as usize => {
                format!("{}.{}", u.created_at_ms, u.upload_id)
            }
            _ => String::new(),
        };
        Ok(Response::new(ListUploadsResponse {
            uploads,
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_carry_paths() {
        assert!(check_file_name("clip.mp4").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "/etc/passwd",
            "a\nb",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn metadata_limits() {
        let ok = UploadMetadata {
            file_name: "a.mp4".into(),
            content_type: "video/mp4".into(),
            ..UploadMetadata::default()
        };
        assert!(check_metadata(&ok, 10).is_ok());
        let wrong_type = UploadMetadata {
            content_type: "image/png".into(),
            ..ok.clone()
        };
        assert_eq!(
            tonic::Status::from(check_metadata(&wrong_type, 10).expect_err("type")).code(),
            tonic::Code::InvalidArgument
        );
        let too_big = UploadMetadata {
            size_bytes: 11,
            ..ok.clone()
        };
        assert_eq!(
            tonic::Status::from(check_metadata(&too_big, 10).expect_err("size")).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(title_of(&ok), "a.mp4");
        let odd_visibility = UploadMetadata {
            visibility: 9,
            ..ok.clone()
        };
        assert_eq!(
            tonic::Status::from(check_metadata(&odd_visibility, 10).expect_err("visibility"))
                .code(),
            tonic::Code::InvalidArgument
        );
    }
}
