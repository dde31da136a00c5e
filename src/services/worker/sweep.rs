//! The safety net under the events: now and then the worker asks the
//! catalog for videos still UPLOADED or TRANSCODING a while after their
//! last change, submits their transcode job (idempotently: one job per
//! video, an existing one is left as it is), and marks failed those whose
//! job gave up. An event lost to a crash or a bus outage so delays a video,
//! never strands it.

use std::time::Duration;

use crate::client::ClientPool;
use crate::proto::{JobState, ListVideosRequest, SubmitJobRequest, VideoState};
use crate::rt;
use crate::services::media;

/// Time between sweeps.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// A video uploaded this long ago and still UPLOADED has lost its event.
pub const GRACE: Duration = Duration::from_secs(30);
/// Most catalog pages read per sweep (100 videos each).
pub const MAX_PAGES: usize = 10;

/// One sweep: submits the jobs of stale UPLOADED and TRANSCODING videos
/// (idempotently: a job that exists is returned as it is), and marks failed
/// those whose job has given up; returns how many jobs it submitted (new
/// jobs only).
///
/// # Errors
/// The catalog or the worker could not be reached.
pub async fn sweep_once(pool: &ClientPool) -> Result<usize, tonic::Status> {
    let unavailable = |e: crate::client::PoolError| tonic::Status::unavailable(e.to_string());
    let mut metadata = pool.metadata().await.map_err(unavailable)?;
    let cutoff = i64::try_from(rt::unix_ms().saturating_sub(millis(GRACE))).unwrap_or(0);
    let mut submitted = 0;
    for state in [VideoState::Uploaded, VideoState::Transcoding] {
        let mut page_token = String::new();
        for _ in 0..MAX_PAGES {
            let page = metadata
                .list_videos(ListVideosRequest {
                    page_size: 100,
                    page_token,
                    state: state as i32,
                    ..ListVideosRequest::default()
                })
                .await?
                .into_inner();
            for video in page.videos.iter().filter(|v| v.updated_at_ms <= cutoff) {
                let mut worker = pool.worker().await.map_err(unavailable)?;
                let res = worker
                    .submit_job(SubmitJobRequest {
                        kind: media::TRANSCODE_JOB.to_owned(),
                        payload_json: super::transcode::payload_json(
                            &video.id,
                            &media::original_key(&video.id),
                        ),
                        idempotency_key: media::transcode_job_id(&video.id),
                        ..SubmitJobRequest::default()
                    })
                    .await?
                    .into_inner();
                if !res.deduplicated {
                    tracing::warn!(video = %video.id, "transcode job was missing; submitted");
                    submitted += 1;
                }
                let job = res.job.unwrap_or_default();
                if job.state == JobState::DeadLetter as i32 {
                    // Its TranscodingFailed event was lost.
                    tracing::warn!(video = %video.id, "transcode job gave up; marking the video failed");
                    super::catalog::failed(pool, &video.id, &job.last_error).await?;
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
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
