//! StreamingService over gRPC: validates input, reads the blob store, keeps
//! sessions and publishes their events; maps [`StreamingError`] to statuses.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::sessions::{Session, Sessions, Stop};
use super::{MAX_PLAYLIST_BYTES, MAX_SEGMENT_BYTES, MAX_THUMBNAIL_BYTES, StreamingError, read};
use crate::blob::local::FileId;
use crate::blob::{BlobError, BlobStore};
use crate::bus::EventBus;
use crate::bus::events::{Payload as _, StreamingStarted, StreamingStopped};
use crate::proto::streaming_service_server::StreamingService;
use crate::proto::{
    DataChunk, GetPlaylistRequest, GetPlaylistResponse, GetSegmentRequest, GetSegmentResponse,
    GetThumbnailRequest, GetThumbnailResponse, LocateOriginalRequest, LocatedFile,
    ReadRangeRequest, StartSessionRequest, StartSessionResponse, StopSessionRequest,
    StopSessionResponse,
};
use crate::rt;
use crate::services::media;

/// MIME type of every playlist.
pub const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
/// Longest path LocateOriginal and LocateSegment name (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest `client_info` of a session.
pub const MAX_CLIENT_INFO: usize = 256;

/// The gRPC face of the streaming service.
#[derive(Clone)]
pub struct StreamingServer {
    blobs: Arc<dyn BlobStore>,
    bus: Arc<dyn EventBus>,
    sessions: Arc<Mutex<Sessions>>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// MIME type of a segment, by its extension.
#[must_use]
pub fn segment_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("ts") => "video/mp2t",
        Some("m4s" | "mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// The blob key of the segment `req` names, checked.
fn segment_key(req: &GetSegmentRequest) -> Result<String, StreamingError> {
    check_id("video_id", &req.video_id)?;
    check_rendition(&req.rendition)?;
    if !media::is_segment_name(&req.segment_name) {
        return Err(bad(
            "segment_name: expected 1..=255 chars of [A-Za-z0-9_.-], not '.' or '..'".into(),
        ));
    }
    Ok(media::segment_key(
        &req.video_id,
        &req.rendition,
        &req.segment_name,
    ))
}

/// A located blob's answer. A path that is not UTF-8 or too long can't be
/// named: then it says there is no local file, and the caller reads
/// through the service.
fn located_file(located: Option<(std::path::PathBuf, FileId)>) -> LocatedFile {
    let Some((path, id)) = located else {
        return LocatedFile::default();
    };
    let Some(path) = path
        .into_os_string()
        .into_string()
        .ok()
        .filter(|p| p.len() <= MAX_PATH_BYTES)
    else {
        return LocatedFile::default();
    };
    LocatedFile {
        path,
        size_bytes: id.size,
        device: id.device,
        inode: id.inode,
        modified_ns: id.modified_ns,
    }
}

/// The file of the blob `key` in `blobs`, as LocateOriginal says it (an
/// empty path: not in a local file), for a media port in this process
/// (`None`: no such blob, or the store failed).
pub async fn locate_here(
    blobs: &std::sync::Arc<dyn crate::blob::BlobStore>,
    key: &str,
) -> Option<LocatedFile> {
    read::locate(blobs, key).await.ok().map(located_file)
}

/// A failure reading `video_id`'s original: a missing blob is no video.
fn original_error(e: BlobError, video_id: &str) -> StreamingError {
    match e {
        BlobError::NotFound(_) => StreamingError::NoVideo(video_id.to_owned()),
        BlobError::OutOfRange { offset, size, .. } => StreamingError::OutOfRange { offset, size },
        e => e.into(),
    }
}

fn bad(message: String) -> StreamingError {
    StreamingError::BadInput(message)
}

fn check_id(field: &str, id: &str) -> Result<(), StreamingError> {
    media::check_id(field, id).map_err(bad)
}

fn check_rendition(rendition: &str) -> Result<(), StreamingError> {
    if media::is_rendition(rendition) {
        Ok(())
    } else {
        Err(bad(
            "rendition: expected 1..=32 chars of [A-Za-z0-9_-]".into()
        ))
    }
}

fn unix_ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl StreamingServer {
    /// A server over `blobs`, publishing on `bus`, with at most `max_sessions`
    /// live sessions.
    #[must_use]
    pub fn new(blobs: Arc<dyn BlobStore>, bus: Arc<dyn EventBus>, max_sessions: usize) -> Self {
        Self {
            blobs,
            bus,
            sessions: Arc::new(Mutex::new(Sessions::new(max_sessions))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Sessions) -> T) -> T {
        f(&mut self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    async fn exists(&self, key: &str) -> Result<bool, StreamingError> {
        match self.blobs.size(key).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Why an HLS blob of `video_id` is missing: the video is not ready, does
    /// not exist, or lacks just that blob (`what`).
    async fn missing(&self, video_id: &str, what: String) -> StreamingError {
        let check = async {
            if self.exists(&media::master_key(video_id)).await? {
                Ok(StreamingError::Missing(what))
            } else if self.exists(&media::original_key(video_id)).await? {
                Ok(StreamingError::NotReady(video_id.to_owned()))
            } else {
                Ok(StreamingError::NoVideo(video_id.to_owned()))
            }
        };
        check.await.unwrap_or_else(|e| e)
    }

    /// Reads a whole HLS blob (`what`, for messages) of at most `limit` bytes.
    async fn read_small(
        &self,
        video_id: &str,
        key: &str,
        what: (&'static str, String),
        limit: usize,
    ) -> Result<Bytes, StreamingError> {
        let data = match self.blobs.read(key, 0, limit).await {
            Ok(data) => data,
            Err(BlobError::NotFound(_)) => {
                let missing = self.missing(video_id, what.1).await;
                // The master itself, missing a moment ago and there now:
                // the transcode finished between the read and the check
                // (with object storage both are round trips). The video
                // has just become ready; read it again rather than call
                // the master missing.
                if !matches!(missing, StreamingError::Missing(_))
                    || key != media::master_key(video_id)
                {
                    return Err(missing);
                }
                match self.blobs.read(key, 0, limit).await {
                    Ok(data) => data,
                    Err(BlobError::NotFound(_)) => return Err(missing),
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        if data.len() >= limit && self.blobs.size(key).await? > limit as u64 {
            return Err(StreamingError::TooLarge {
                what: what.0,
                limit,
            });
        }
        Ok(data)
    }

    async fn publish(&self, event: Result<crate::bus::Event, crate::bus::BusError>) {
        let published = match event {
            Ok(ev) => self.bus.publish(&ev).await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, "streaming event not published");
        }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<DataChunk, Status>> + Send>>;

#[tonic::async_trait]
impl StreamingService for StreamingServer {
    type ReadRangeStream = ChunkStream;

    async fn read_range(
        &self,
        req: Request<ReadRangeRequest>,
    ) -> Result<Response<Self::ReadRangeStream>, Status> {
        let req = req.into_inner();
        check_id("video_id", &req.video_id)?;
        let opened = read::open(
            &self.blobs,
            &media::original_key(&req.video_id),
            req.offset,
            req.length,
        )
        .await
        .map_err(|e| original_error(e, &req.video_id))?;
        tracing::debug!(video = %req.video_id, size = opened.size(), offset = req.offset, "read range");
        let chunks = opened.chunks()?;
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn locate_original(
        &self,
        req: Request<LocateOriginalRequest>,
    ) -> Result<Response<LocatedFile>, Status> {
        let req = req.into_inner();
        check_id("video_id", &req.video_id)?;
        let located = read::locate(&self.blobs, &media::original_key(&req.video_id))
            .await
            .map_err(|e| original_error(e, &req.video_id))?;
        Ok(Response::new(located_file(located)))
    }

    async fn locate_segment(
        &self,
        req: Request<GetSegmentRequest>,
    ) -> Result<Response<LocatedFile>, Status> {
        let req = req.into_inner();
        let key = segment_key(&req)?;
        let located = match read::locate(&self.blobs, &key).await {
            Ok(located) => located,
            Err(BlobError::NotFound(_)) => {
                let what = format!("segment {}/{}", req.rendition, req.segment_name);
                return Err(self.missing(&req.video_id, what).await.into());
            }
            Err(e) => return Err(StreamingError::from(e).into()),
        };
        if let Some((_, id)) = &located
            && id.size > MAX_SEGMENT_BYTES as u64
        {
            return Err(StreamingError::TooLarge {
                what: "segment",
                limit: MAX_SEGMENT_BYTES,
            }
            .into());
        }
        Ok(Response::new(located_file(located)))
    }

    async fn get_playlist(
        &self,
        req: Request<GetPlaylistRequest>,
    ) -> Result<Response<GetPlaylistResponse>, Status> {
        let req = req.into_inner();
        check_id("video_id", &req.video_id)?;
        // A missing master means "not ready" (it is written last).
        let (key, what) = if req.rendition.is_empty() {
            (media::master_key(&req.video_id), "master playlist".into())
        } else {
            check_rendition(&req.rendition)?;
            (
                media::playlist_key(&req.video_id, &req.rendition),
                format!("rendition {:?}", req.rendition),
            )
        };
        let data = self
            .read_small(&req.video_id, &key, ("playlist", what), MAX_PLAYLIST_BYTES)
            .await?;
        let content = String::from_utf8(data.to_vec()).map_err(|_| StreamingError::NotUtf8(key))?;
        Ok(Response::new(GetPlaylistResponse {
            content,
            content_type: PLAYLIST_TYPE.to_owned(),
        }))
    }

    async fn get_segment(
        &self,
        req: Request<GetSegmentRequest>,
    ) -> Result<Response<GetSegmentResponse>, Status> {
        let req = req.into_inner();
        let key = segment_key(&req)?;
        let what = format!("segment {}/{}", req.rendition, req.segment_name);
        let data = self
            .read_small(&req.video_id, &key, ("segment", what), MAX_SEGMENT_BYTES)
            .await?;
        Ok(Response::new(GetSegmentResponse {
            data,
            content_type: segment_type(&req.segment_name).to_owned(),
        }))
    }

    async fn get_thumbnail(
        &self,
        req: Request<GetThumbnailRequest>,
    ) -> Result<Response<GetThumbnailResponse>, Status> {
        let req = req.into_inner();
        check_id("video_id", &req.video_id)?;
        let key = media::thumbnail_key(&req.video_id);
        let data = self
            .read_small(
                &req.video_id,
                &key,
                ("thumbnail", "thumbnail".to_owned()),
                MAX_THUMBNAIL_BYTES,
            )
            .await?;
        Ok(Response::new(GetThumbnailResponse {
            data,
            content_type: "image/jpeg".to_owned(),
        }))
    }

    async fn start_session(
        &self,
        req: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let req = req.into_inner();
        check_id("video_id", &req.video_id)?;
        if !req.viewer_id.is_empty() {
            check_id("viewer_id", &req.viewer_id)?;
        }
        if !req.rendition.is_empty() {
            check_rendition(&req.rendition)?;
        }
        if req.client_info.len() > MAX_CLIENT_INFO {
            return Err(bad(format!("client_info: exceeds {MAX_CLIENT_INFO} bytes")).into());
        }
        if !self.exists(&media::original_key(&req.video_id)).await? {
            return Err(StreamingError::NoVideo(req.video_id).into());
        }
        let session_id = rt::random_hex128();
        let started_at_ms = rt::unix_ms();
        self.with(|s| {
            s.start(
                session_id.clone(),
                Session {
                    video_id: req.video_id.clone(),
                    started_at_ms,
                },
            )
        })?;
        let rendition = if req.rendition.is_empty() {
            "original".to_owned()
        } else {
            req.rendition
        };
        let event = StreamingStarted {
            video_id: req.video_id,
            session_id: session_id.clone(),
            rendition,
        }
        .to_event("streaming");
        self.publish(event).await;
        Ok(Response::new(StartSessionResponse {
            session_id,
            started_at_ms: unix_ms_i64(started_at_ms),
        }))
    }

    async fn stop_session(
        &self,
        req: Request<StopSessionRequest>,
    ) -> Result<Response<StopSessionResponse>, Status> {
        let req = req.into_inner();
        check_id("session_id", &req.session_id)?;
        let stop = self.with(|s| s.stop(&req.session_id, rt::unix_ms()))?;
        let done = match stop {
            Stop::Repeat(done) => done,
            Stop::First(session, done) => {
                let event = StreamingStopped {
                    video_id: session.video_id,
                    session_id: req.session_id,
                    bytes_served: req.bytes_served,
                }
                .to_event("streaming");
                self.publish(event).await;
                done
            }
        };
        Ok(Response::new(StopSessionResponse {
            duration_ms: done.duration_ms,
            stopped_at_ms: unix_ms_i64(done.stopped_at_ms),
        }))
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
