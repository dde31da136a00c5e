//! The safety net under the events: now and then the worker asks the
//! catalog for videos still UPLOADED a while after their upload and submits
//! their transcode job (idempotently: one job per video), and for videos
//! still TRANSCODING whose job gave up, and marks them failed. An event lost
//! to a crash or a bus outage so delays a video, never strands it.

use std::time::Duration;

use crate::client::ClientPool;
use crate::proto::{GetJobRequest, JobState, ListVideosRequest, SubmitJobRequest, VideoState};
use crate::rt;
use crate::services::media;

/// Time between sweeps.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A video uploaded this long ago and still UPLOADED has lost its event.
pub const GRACE: Duration = Duration::from_secs(30);
/// Most catalog pages read per sweep (100 videos each).
pub const MAX_PAGES: usize = 10;

/// One sweep: submits the jobs of stale UPLOADED videos; how many it
/// submitted (new jobs only).
///
/// # Errors
/// The catalog or the worker could not be reached.
pub async fn sweep_once(pool: &ClientPool) -> Result<usize, tonic::Status> {
    let unavailable = |e: crate::client::PoolError| tonic::Status::unavailable(e.to_string());
    let mut metadata = pool.metadata().await.map_err(unavailable)?;
    let cutoff = i64::try_from(rt::unix_ms().saturating_sub(millis(GRACE))).unwrap_or(0);
    let mut submitted = 0;
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let page = metadata
            .list_videos(ListVideosRequest {
                page_size: 100,
                page_token,
                state: VideoState::Uploaded as i32,
                ..ListVideosRequest::default()
            })
            .await?
            .into_inner();
        for video in page.videos.iter().filter(|v| v.updated_at_ms <= cutoff) {
            let mut worker = pool.worker().await.map_err(unavailable)?;
            let job_id = media::transcode_job_id(&video.id);
            let res = worker
                .submit_job(SubmitJobRequest {
                    kind: media::TRANSCODE_JOB.to_owned(),
                    payload_json: super::transcode::payload_json(
                        &video.id,
                        &media::original_key(&video.id),
                    ),
                    idempotency_key: job_id,
                    ..SubmitJobRequest::default()
                })
                .await?
                .into_inner();
            if !res.deduplicated {
                tracing::warn!(video = %video.id, "transcode job was missing; submitted");
                submitted += 1;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    give_up_stranded(pool, &mut metadata, cutoff).await?;
    Ok(submitted)
}

/// Marks failed the videos still TRANSCODING whose job is dead-lettered
/// (their TranscodingFailed event was lost).
async fn give_up_stranded(
    pool: &ClientPool,
    metadata: &mut crate::proto::metadata_service_client::MetadataServiceClient<
        crate::client::PoolChannel,
    >,
    cutoff: i64,
) -> Result<(), tonic::Status> {
    let unavailable = |e: crate::client::PoolError| tonic::Status::unavailable(e.to_string());
    let mut page_token = String::new();
    for _ in 0..MAX_PAGES {
        let page = metadata
            .list_videos(ListVideosRequest {
                page_size: 100,
                page_token,
                state: VideoState::Transcoding as i32,
                ..ListVideosRequest::default()
            })
            .await?
            .into_inner();
        for video in page.videos.iter().filter(|v| v.updated_at_ms <= cutoff) {
            let mut worker = pool.worker().await.map_err(unavailable)?;
            let req = GetJobRequest {
                job_id: media::transcode_job_id(&video.id),
            };
            let job = match worker.get_job(req).await {
                Ok(res) => res.into_inner().job.unwrap_or_default(),
                Err(s) if s.code() == tonic::Code::NotFound => continue,
                Err(s) => return Err(s),
            };
            if job.state == JobState::DeadLetter as i32 {
                tracing::warn!(video = %video.id, "transcode job gave up but the video was still transcoding");
                super::catalog::failed(pool, &video.id, &job.last_error).await?;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sweeps every [`INTERVAL`] until aborted.
pub async fn run(pool: ClientPool) {
    loop {
        rt::sleep(INTERVAL).await;
        if let Err(e) = sweep_once(&pool).await {
            tracing::debug!(error = %e, "sweep skipped");
        }
    }
}
