//! The simulator's transcoder: takes (simulated) time, fails at a given
//! rate, and otherwise writes small fake HLS trees under the real keys.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng as _;

use super::engine::{Context, Failure, Job, Output, Reason, Reporter};
use super::hls::{Rendition, master_playlist, media_playlist};
use crate::rt;
use crate::services::media;

/// Progress steps the model's duration is cut into.
const STEPS: u32 = 10;
/// Duration the model reports for every video.
pub const MODEL_DURATION_MS: u64 = 10_000;
/// Source size the model pretends (its renditions fit a 720p source).
const MODEL_SOURCE: (u32, u32) = (1280, 720);

/// Runs `job` as the model: `duration` of sleep, then fake outputs.
///
/// # Errors
/// The source is missing, the drawn failure, or a blob store failure.
pub async fn run(
    duration: Duration,
    failure_rate: f64,
    ctx: &Context,
    job: &Job,
    report: &dyn Reporter,
) -> Result<Output, Failure> {
    ctx.blobs.size(&job.source_key).await.map_err(|e| {
        Failure::new(
            Reason::SourceUnavailable,
            format!("source unavailable: {e}"),
        )
    })?;
    let profiles = job
        .profiles
        .clone()
        .unwrap_or_else(|| media::profiles_for(MODEL_SOURCE.1));
    let renditions: Vec<Rendition> = profiles
        .into_iter()
        .map(|p| Rendition::scaled(p, MODEL_SOURCE.0, MODEL_SOURCE.1))
        .collect();
    report.started(&renditions).await;
    for step in 1..=STEPS {
        rt::sleep(duration / STEPS).await;
        report.progress(step * 90 / STEPS);
    }
    if rt::rng().gen_bool(failure_rate.clamp(0.0, 1.0)) {
        return Err(Failure::new(
            Reason::Failed,
            "model: simulated transcode failure",
        ));
    }
    let put = |key: String, data: Bytes| async move {
        ctx.blobs
            .put(&key, data)
            .await
            .map_err(|e| Failure::new(Reason::StoreFailed, format!("uploading {key}: {e}")))
    };
    let segment = "seg_00000.ts";
    #[allow(clippy::cast_precision_loss)]
    let seconds = MODEL_DURATION_MS as f64 / 1000.0;
    let mut written = std::collections::BTreeSet::new();
    for r in &renditions {
        let name = r.profile.name;
        let fake = Bytes::from(format!("model segment of {} {name}", job.video_id));
        let key = media::segment_key(&job.video_id, name, segment);
        put(key.clone(), fake).await?;
        written.insert(key);
        let playlist = media_playlist(&[(segment, seconds)]);
        let key = media::playlist_key(&job.video_id, name);
        put(key.clone(), playlist.into()).await?;
        written.insert(key);
    }
    let thumbnail_key = media::thumbnail_key(&job.video_id);
    put(
        thumbnail_key.clone(),
        Bytes::from_static(b"\xff\xd8\xff\xd9"),
    )
    .await?;
    super::engine::prune_stale(ctx, &job.video_id, &written).await?;
    // The master goes last: its presence means the video is ready.
    let master = master_playlist(&renditions);
    put(media::master_key(&job.video_id), master.into()).await?;
    report.progress(100);
    Ok(Output {
        renditions,
        duration_ms: MODEL_DURATION_MS,
        thumbnail_key: Some(thumbnail_key),
    })
}
