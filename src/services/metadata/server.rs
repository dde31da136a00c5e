//! MetadataService over gRPC: validates requests, runs them against the
//! catalog, publishes Metadata* events.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::catalog::{Catalog, Filter};
use super::error::MetadataError;
use super::state::{self, MAX_REASON};
use crate::bus::EventBus;
use crate::bus::events::{MetadataCreated, MetadataDeleted, MetadataUpdated, Payload};
use crate::proto::metadata_service_server::MetadataService;
use crate::proto::{
    CreateVideoRequest, CreateVideoResponse, DeleteVideoRequest, DeleteVideoResponse,
    GetVideoRequest, GetVideoResponse, ListVideosRequest, ListVideosResponse, UpdateVideoRequest,
    UpdateVideoResponse, Video, VideoState, Visibility,
};
use crate::rt;
use crate::services::media;

/// Most videos per page.
pub const MAX_PAGE: u32 = 100;
/// Videos per page when the caller names no size.
pub const DEFAULT_PAGE: u32 = 20;
/// Most renditions per video.
pub const MAX_RENDITIONS: usize = 16;

/// Publishes `payload`; a bus failure is logged, the change stands.
pub async fn announce(bus: &Arc<dyn EventBus>, payload: &impl Payload) {
    match payload.to_event("metadata") {
        Ok(event) => {
            if let Err(e) = bus.publish(&event).await {
                tracing::warn!(error = %e, kind = ?event.kind, "publishing failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "event does not encode"),
    }
}

/// The gRPC face of the catalog.
#[derive(Clone)]
pub struct MetadataServer {
    store: Catalog,
    bus: Arc<dyn EventBus>,
    max_size: u64,
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer").finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> MetadataError {
    MetadataError::Invalid(msg.into())
}

fn check_title(title: &str) -> Result<(), MetadataError> {
    if title.is_empty() || title.len() > 200 || title.chars().any(char::is_control) {
        return Err(invalid("title: 1..=200 bytes without control characters"));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), MetadataError> {
    if d.len() > 5000 {
        return Err(invalid("description: at most 5000 bytes"));
    }
    Ok(())
}

fn state_name(s: VideoState) -> &'static str {
    match s {
        VideoState::Unspecified => "unspecified",
        VideoState::Uploaded => "uploaded",
        VideoState::Transcoding => "transcoding",
        VideoState::Ready => "ready",
        VideoState::Failed => "failed",
    }
}

/// A visibility a caller asks for: UNSPECIFIED is `default` (PRIVATE at
/// creation; refused for an update), an unknown value is refused.
fn visibility(value: i32, default: Option<Visibility>) -> Result<Visibility, MetadataError> {
    match Visibility::try_from(value) {
        Ok(Visibility::Unspecified) => default.ok_or_else(|| invalid("visibility: must be set")),
        Ok(v) => Ok(v),
        Err(_) => Err(invalid("visibility: unknown value")),
    }
}

/// The lower-case name of a video's state, as in MetadataUpdated.
#[must_use]
pub fn video_state(v: &Video) -> &'static str {
    state_name(VideoState::try_from(v.state).unwrap_or(VideoState::Unspecified))
}

fn parse_token(token: &str) -> Result<Option<(i64, String)>, MetadataError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid("page_token: not a token from a previous page");
    if token.len() > 512 {
        return Err(bad());
    }
    let (at, id) = token.split_once('.').ok_or_else(bad)?;
    let at = at.parse().map_err(|_| bad())?;
    if !media::is_id(id) {
        return Err(bad());
    }
    Ok(Some((at, id.to_owned())))
}

impl MetadataServer {
    /// A server over `store`, announcing on `bus`; sizes up to `max_size`.
    #[must_use]
    pub fn new(store: Catalog, bus: Arc<dyn EventBus>, max_size: u64) -> Self {
        Self {
            store,
            bus,
            max_size,
        }
    }

    fn new_video(&self, r: CreateVideoRequest) -> Result<Video, MetadataError> {
        let id = if r.video_id.is_empty() {
            rt::random_hex128()
        } else {
            media::check_id("video_id", &r.video_id).map_err(invalid)?;
            r.video_id
        };
        media::check_id("owner_id", &r.owner_id).map_err(invalid)?;
        check_title(&r.title)?;
        check_description(&r.description)?;
        if !r.content_type.starts_with("video/") || r.content_type.len() > 127 {
            return Err(invalid("content_type: video/*, at most 127 bytes"));
        }
        if r.size_bytes == 0 || r.size_bytes > self.max_size {
            return Err(invalid(format!("size_bytes: 1..={}", self.max_size)));
        }
        if r.sha256_hex.len() != 64
            || !r
                .sha256_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(invalid("sha256_hex: 64 lower-case hex digits"));
        }
        let visibility = visibility(r.visibility, Some(Visibility::Private))?;
        let now = i64::try_from(rt::unix_ms()).unwrap_or(i64::MAX);
        Ok(Video {
            id,
            owner_id: r.owner_id,
            title: r.title,
            description: r.description,
            content_type: r.content_type,
            size_bytes: r.size_bytes,
            sha256_hex: r.sha256_hex,
            state: VideoState::Uploaded as i32,
            created_at_ms: now,
            updated_at_ms: now,
            visibility: visibility as i32,
            ..Video::default()
        })
    }
}

/// Applies the fields of `r` named in its update mask to `v`.
fn apply_update(v: &mut Video, r: UpdateVideoRequest) -> Result<Vec<String>, MetadataError> {
    if r.update_fields.is_empty() || r.update_fields.len() > 8 {
        return Err(invalid("update_fields: 1..=8 field names"));
    }
    if r.expected_updated_at_ms != 0 && r.expected_updated_at_ms != v.updated_at_ms {
        return Err(MetadataError::Conflict(
            "the video changed since expected_updated_at_ms".to_owned(),
        ));
    }
    let mut fields = r.update_fields.clone();
    fields.sort();
    fields.dedup();
    for field in &fields {
        match field.as_str() {
            "title" => {
                check_title(&r.title)?;
                v.title.clone_from(&r.title);
            }
            "description" => {
                check_description(&r.description)?;
                v.description.clone_from(&r.description);
            }
            "state" => {
                let to = VideoState::try_from(r.state).unwrap_or(VideoState::Unspecified);
                let from = VideoState::try_from(v.state).unwrap_or(VideoState::Unspecified);
                if to == VideoState::Unspecified {
                    return Err(invalid("state: must be set"));
                }
                if !state::may_move(from, to) {
                    return Err(MetadataError::Conflict(format!(
                        "state: {} -> {} is not allowed",
                        state_name(from),
                        state_name(to)
                    )));
                }
                v.state = to as i32;
            }
            "failure_reason" => {
                if r.failure_reason.len() > MAX_REASON {
                    return Err(invalid("failure_reason: at most 1024 bytes"));
                }
                v.failure_reason.clone_from(&r.failure_reason);
            }
            "renditions" => {
                let mut names: Vec<&str> = r.renditions.iter().map(|x| x.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                if r.renditions.len() > MAX_RENDITIONS
                    || names.len() != r.renditions.len()
                    || !names.iter().all(|n| media::is_rendition(n))
                {
                    return Err(invalid("renditions: 0..=16 with unique valid names"));
                }
                v.renditions.clone_from(&r.renditions);
            }
            "duration_ms" => v.duration_ms = r.duration_ms,
            "thumbnail_key" => {
                if !r.thumbnail_key.is_empty() {
                    crate::blob::check_key(&r.thumbnail_key)
                        .map_err(|e| invalid(format!("thumbnail_key: {e}")))?;
                }
                v.thumbnail_key.clone_from(&r.thumbnail_key);
            }
            "visibility" => v.visibility = visibility(r.visibility, None)? as i32,
            other => return Err(invalid(format!("update_fields: unknown field {other:?}"))),
        }
    }
    Ok(fields)
}

#[tonic::async_trait]
impl MetadataService for MetadataServer {
    async fn create_video(
        &self,
        req: Request<CreateVideoRequest>,
    ) -> Result<Response<CreateVideoResponse>, Status> {
        let video = self.new_video(req.into_inner())?;
        self.store
            .create(video.clone())
            .await
            .map_err(MetadataError::from)?;
        announce(
            &self.bus,
            &MetadataCreated {
                video_id: video.id.clone(),
                owner_id: video.owner_id.clone(),
                title: video.title.clone(),
            },
        )
        .await;
        Ok(Response::new(CreateVideoResponse { video: Some(video) }))
    }

    async fn get_video(
        &self,
        req: Request<GetVideoRequest>,
    ) -> Result<Response<GetVideoResponse>, Status> {
        let id = req.into_inner().video_id;
        media::check_id("video_id", &id).map_err(invalid)?;
        let found = self.store.get(&id).await.map_err(MetadataError::from)?;
        let video = found.ok_or(MetadataError::NotFound(id))?;
        Ok(Response::new(GetVideoResponse { video: Some(video) }))
    }

    async fn update_video(
        &self,
        req: Request<UpdateVideoRequest>,
    ) -> Result<Response<UpdateVideoResponse>, Status> {
        let r = req.into_inner();
        media::check_id("video_id", &r.video_id).map_err(invalid)?;
        let now = i64::try_from(rt::unix_ms()).unwrap_or(i64::MAX);
        let id = r.video_id.clone();
        let updated = self
            .store
            .update(&id, move |v| {
                let fields = apply_update(v, r)?;
                v.updated_at_ms = v.updated_at_ms.max(now);
                if v.state == VideoState::Ready as i32 && v.ready_at_ms == 0 {
                    v.ready_at_ms = v.updated_at_ms;
                }
                Ok::<_, MetadataError>(fields)
            })
            .await
            .map_err(MetadataError::from)?;
        let (video, fields) = updated.ok_or(MetadataError::NotFound(id))??;
        announce(
            &self.bus,
            &MetadataUpdated {
                video_id: video.id.clone(),
                fields,
                state: video_state(&video).to_owned(),
            },
        )
        .await;
        Ok(Response::new(UpdateVideoResponse { video: Some(video) }))
    }

    async fn delete_video(
        &self,
        req: Request<DeleteVideoRequest>,
    ) -> Result<Response<DeleteVideoResponse>, Status> {
        let id = req.into_inner().video_id;
        media::check_id("video_id", &id).map_err(invalid)?;
        let deleted = self.store.delete(&id).await.map_err(MetadataError::from)?;
        if !deleted {
            return Err(MetadataError::NotFound(id).into());
        }
        announce(&self.bus, &MetadataDeleted { video_id: id }).await;
        Ok(Response::new(DeleteVideoResponse { deleted }))
    }

    async fn list_videos(
        &self,
        req: Request<ListVideosRequest>,
    ) -> Result<Response<ListVideosResponse>, Status> {
        let r = req.into_inner();
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => return Err(invalid("page_size: 1..=100").into()),
        };
        if !r.owner_id.is_empty() {
            media::check_id("owner_id", &r.owner_id).map_err(invalid)?;
        }
        if !r.viewer_id.is_empty() {
            media::check_id("viewer_id", &r.viewer_id).map_err(invalid)?;
        }
        let state = match VideoState::try_from(r.state) {
            Ok(VideoState::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => return Err(invalid("state: unknown value").into()),
        };
        let after = parse_token(&r.page_token)?;
        let filter = Filter {
            owner: (!r.owner_id.is_empty()).then_some(r.owner_id),
            state,
            viewer: (!r.viewer_id.is_empty()).then_some(r.viewer_id),
        };
        let videos = self
            .store
            .list(filter, after, limit)
            .await
            .map_err(MetadataError::from)?;
        let next_page_token = match videos.last() {
            Some(v) if videos.len() == limit as usize => format!("{}.{}", v.created_at_ms, v.id),
            _ => String::new(),
        };
        Ok(Response::new(ListVideosResponse {
            videos,
            next_page_token,
        }))
    }
}
