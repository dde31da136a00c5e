//! The worker writes a transcode's outcome into the catalog over gRPC, so a
//! video never depends on the Transcoding* events alone: the bus is at most
//! once (a broker outage, or a consumer reconnecting, loses them), and the
//! simulation's swarm found videos left "transcoding" for good after one.
//! Both writes are idempotent and converge with the events, whichever
//! arrives first.

use tonic::{Code, Status};

use crate::client::ClientPool;
use crate::proto::metadata_service_client::MetadataServiceClient;
use crate::proto::{GetVideoRequest, Rendition, UpdateVideoRequest, Video, VideoState};

type Metadata = MetadataServiceClient<crate::client::PoolChannel>;

async fn client(pool: &ClientPool) -> Result<Metadata, Status> {
    pool.metadata()
        .await
        .map_err(|e| Status::unavailable(format!("metadata: {e}")))
}

/// The video, or `None` if it was deleted.
async fn get(metadata: &mut Metadata, video_id: &str) -> Result<Option<Video>, Status> {
    let req = GetVideoRequest {
        video_id: video_id.to_owned(),
    };
    match metadata.get_video(req).await {
        Ok(res) => Ok(res.into_inner().video),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

fn state_of(v: &Video) -> VideoState {
    VideoState::try_from(v.state).unwrap_or(VideoState::Unspecified)
}

/// Sets `state` (and the other `fields` of `update`); a refused transition
/// or a deleted video is not an error (an event got there first).
async fn set(metadata: &mut Metadata, update: UpdateVideoRequest) -> Result<(), Status> {
    match metadata.update_video(update).await {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        Err(s) => Err(s),
    }
}

/// Marks `video_id` ready with `renditions`, through TRANSCODING if it is
/// still UPLOADED or FAILED (lost events). Done once the catalog says READY
/// or the video is gone.
///
/// # Errors
/// The catalog could not be reached or did not take the update.
pub async fn ready(
    pool: &ClientPool,
    video_id: &str,
    renditions: Vec<Rendition>,
) -> Result<(), Status> {
    let mut metadata = client(pool).await?;
    let Some(video) = get(&mut metadata, video_id).await? else {
        return Ok(());
    };
    let state = state_of(&video);
    if state == VideoState::Ready {
        return Ok(());
    }
    if matches!(state, VideoState::Uploaded | VideoState::Failed) {
        let req = UpdateVideoRequest {
            video_id: video_id.to_owned(),
            update_fields: vec!["state".into()],
            state: VideoState::Transcoding.into(),
            ..UpdateVideoRequest::default()
        };
        set(&mut metadata, req).await?;
    }
    let req = UpdateVideoRequest {
        video_id: video_id.to_owned(),
        update_fields: vec!["state".into(), "renditions".into()],
        state: VideoState::Ready.into(),
        renditions,
        ..UpdateVideoRequest::default()
    };
    set(&mut metadata, req).await?;
    match get(&mut metadata, video_id).await? {
        Some(v) if state_of(&v) != VideoState::Ready => Err(Status::unavailable(format!(
            "video {video_id} is still {:?} in the catalog",
            state_of(&v)
        ))),
        _ => Ok(()),
    }
}

/// Marks `video_id` failed with `reason` unless it is ready (the job gave
/// up for good).
///
/// # Errors
/// The catalog could not be reached.
pub async fn failed(pool: &ClientPool, video_id: &str, reason: &str) -> Result<(), Status> {
    let mut metadata = client(pool).await?;
    let Some(video) = get(&mut metadata, video_id).await? else {
        return Ok(());
    };
    if matches!(state_of(&video), VideoState::Ready | VideoState::Failed) {
        return Ok(());
    }
    let reason: String = reason.chars().take(256).collect();
    let req = UpdateVideoRequest {
        video_id: video_id.to_owned(),
        update_fields: vec!["state".into(), "failure_reason".into()],
        state: VideoState::Failed.into(),
        failure_reason: if reason.is_empty() {
            "transcoding gave up".to_owned()
        } else {
            reason
        },
        ..UpdateVideoRequest::default()
    };
    set(&mut metadata, req).await
}
