//! The safety net under the FileUploaded event: now and then the worker
//! asks the catalog for videos still UPLOADED a while after their upload
//! and submits their transcode job (idempotently: one job per video). An
//! event lost to a crash or a bus outage so delays a video, never loses it.

use std::time::Duration;

use crate::client::ClientPool;
use crate::proto::{ListVideosRequest, SubmitJobRequest, VideoState};
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
    Ok(submitted)
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
