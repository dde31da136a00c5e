//! What an engine is given and returns, and the dispatch to the ffmpeg
//! pipeline or the simulator's model.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::Engine;
use super::hls::Rendition;
use crate::blob::BlobStore;
use crate::services::media::Profile;

/// Longest failure reason kept (the proto allows 1024 bytes).
pub const MAX_REASON_BYTES: usize = 1024;

/// Why a transcode failed, for people (e.g. "corrupt or unsupported input: ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

impl Failure {
    /// A failure saying `reason`, cut to [`MAX_REASON_BYTES`].
    #[must_use]
    pub fn new(reason: impl Into<String>) -> Self {
        Self(truncate(reason.into(), MAX_REASON_BYTES))
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
        Engine::Ffmpeg { .. } => Err(Failure::new("the ffmpeg engine is not available here")),
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
        assert_eq!(Failure::new("x".repeat(5000)).0.len(), MAX_REASON_BYTES);
    }
}
