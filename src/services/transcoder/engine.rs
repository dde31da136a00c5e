//! What an engine is given and returns, and the dispatch to the ffmpeg
//! pipeline or the simulator's model.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::Engine;
use super::hls::Rendition;
use crate::blob::BlobStore;
use crate::services::media::Profile;

/// Longest failure detail kept (a log line's worth).
pub const MAX_REASON_BYTES: usize = 1024;

/// Why a transcode failed, as users are told (the video's
/// `failure_reason`, the job's `last_error`): a few fixed words that name
/// no file, key or tool output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// ffprobe could not read the original as a video.
    NotAVideo,
    /// The original could not be read from the blob store.
    SourceUnavailable,
    /// The original is larger than a transcode takes.
    SourceTooLarge,
    /// The transcode took longer than allowed.
    TimedOut,
    /// The encoder (or the transcoder itself) failed.
    Failed,
    /// The outputs could not be stored.
    StoreFailed,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Self; 6] = [
        Self::NotAVideo,
        Self::SourceUnavailable,
        Self::SourceTooLarge,
        Self::TimedOut,
        Self::Failed,
        Self::StoreFailed,
    ];

    /// What a user reads.
    #[must_use]
    pub const fn message(self) -> &'static str {
        match self {
            Self::NotAVideo => "the file is not a video ffprobe can read",
            Self::SourceUnavailable => "the original could not be read",
            Self::SourceTooLarge => "the original is too large to transcode",
            Self::TimedOut => "timed out",
            Self::Failed => "transcoding failed",
            Self::StoreFailed => "the transcoded files could not be stored",
        }
    }

    /// The reason whose message is `message`, if one.
    #[must_use]
    pub fn of_message(message: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.message() == message)
    }
}

/// A failed transcode: the [`Reason`] users read, and the detail (ffprobe's
/// stderr, blob keys, the I/O error) that goes to the log with the video's
/// id and never further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", .reason.message())]
pub struct Failure {
    /// What users are told.
    pub reason: Reason,
    /// What happened, for the log; cut to [`MAX_REASON_BYTES`].
    pub detail: String,
}

impl Failure {
    /// A failure for `reason`, `detail` cut to [`MAX_REASON_BYTES`].
    #[must_use]
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: truncate(detail.into(), MAX_REASON_BYTES),
        }
    }
}

/// `s` cut to at most `max` bytes on a char boundary.
#[must_use]
pub fn truncate(mut s: String, max: usize) -> String {
    let end = crate::text::prefix(&s, max).len();
    s.truncate(end);
    s
}

/// One transcode to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The video.
    pub video_id: String,
    /// Blob key of the original.
    pub source_key: String,
    /// The profiles asked for; `None` = every profile fitting the source.
    pub profiles: Option<Vec<Profile>>,
}

/// What a finished transcode produced (all of it uploaded, master last).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The renditions, ascending by height.
    pub renditions: Vec<Rendition>,
    /// Duration of the video.
    pub duration_ms: u64,
    /// Blob key of the thumbnail, if one was made.
    pub thumbnail_key: Option<String>,
}

/// Hears how a transcode goes.
#[async_trait]
pub trait Reporter: Send + Sync {
    /// Work began on `renditions` (the source was probed).
    async fn started(&self, renditions: &[Rendition]);
    /// Overall progress, 0..=100.
    fn progress(&self, percent: u32);
}

/// Live handles an engine works with.
#[derive(Debug, Clone)]
pub struct Context {
    /// Where the original is read from and the outputs go.
    pub blobs: Arc<dyn BlobStore>,
    /// Where temporary work directories are made.
    pub work_root: PathBuf,
}

/// Most listing pages read when clearing a video's stale HLS files.
const MAX_PRUNE_PAGES: usize = 1000;

/// Removes what an earlier, dead transcode of `video_id` left under its HLS
/// tree and this run did not write (`written`): renditions or segments it
/// does not make, which the master this run writes next must not sit
/// beside. Called after every other output is in place and before the
/// master, which is left for the run to replace (a complete earlier run
/// keeps serving meanwhile); a concurrent run of the same video writes the
/// same keys, so it loses nothing.
///
/// # Errors
/// The blob store failed.
pub async fn prune_stale(
    ctx: &Context,
    video_id: &str,
    written: &std::collections::BTreeSet<String>,
) -> Result<usize, Failure> {
    use crate::services::media;
    let store = |e: crate::blob::BlobError| {
        Failure::new(Reason::StoreFailed, format!("clearing stale outputs: {e}"))
    };
    let (prefix, master) = (media::hls_prefix(video_id), media::master_key(video_id));
    let mut stale = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PRUNE_PAGES {
        let page = ctx
            .blobs
            .list(&prefix, after.as_deref(), crate::blob::MAX_LIST)
            .await
            .map_err(store)?;
        stale.extend(
            page.iter()
                .filter(|b| b.key != master && !written.contains(&b.key))
                .map(|b| b.key.clone()),
        );
        if page.len() < crate::blob::MAX_LIST {
            break;
        }
        after = page.last().map(|b| b.key.clone());
    }
    for key in &stale {
        ctx.blobs.delete(key).await.map_err(store)?;
    }
    if !stale.is_empty() {
        tracing::info!(
            video_id,
            removed = stale.len(),
            "stale outputs of an earlier transcode removed"
        );
    }
    Ok(stale.len())
}

/// Runs `job` on `engine`.
///
/// # Errors
/// A [`Failure`] with the reason.
pub async fn run(
    engine: &Engine,
    ctx: &Context,
    job: &Job,
    report: &dyn Reporter,
) -> Result<Output, Failure> {
    match engine {
        #[cfg(not(madsim))]
        Engine::Ffmpeg { .. } => super::ffmpeg::run(engine, ctx, job, report).await,
        #[cfg(madsim)]
        Engine::Ffmpeg { .. } => Err(Failure::new(
            Reason::Failed,
            "the ffmpeg engine is not available here",
        )),
        Engine::Model {
            duration,
            failure_rate,
        } => super::model::run(*duration, *failure_rate, ctx, job, report).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 5), "abc");
        assert_eq!(
            Failure::new(Reason::Failed, "x".repeat(5000)).detail.len(),
            MAX_REASON_BYTES
        );
        for r in Reason::ALL {
            assert_eq!(Reason::of_message(r.message()), Some(r));
        }
        assert_eq!(Reason::of_message("originals/v1: Invalid data"), None);
    }
}
