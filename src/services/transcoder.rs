//! transcoder (9092): turns an original into HLS renditions and a thumbnail
//! (ffmpeg subprocesses; a timed model in the simulator).

use std::path::PathBuf;
use std::time::Duration;

use crate::kernel::{KernelError, Runtime};
use crate::services::{Domain, ServiceOpts};

/// How videos are transcoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Engine {
    /// `ffmpeg` and `ffprobe` subprocesses, each run bounded by `timeout`.
    Ffmpeg {
        /// The ffmpeg binary.
        ffmpeg: PathBuf,
        /// The ffprobe binary.
        ffprobe: PathBuf,
        /// Longest a whole transcode may take.
        timeout: Duration,
    },
    /// A model for the simulator: takes `duration` of (simulated) time and
    /// fails with probability `failure_rate`.
    Model {
        /// How long a transcode takes.
        duration: Duration,
        /// Chance that it fails, 0..=1.
        failure_rate: f64,
    },
}

impl Default for Engine {
    fn default() -> Self {
        if cfg!(madsim) {
            Self::Model {
                duration: Duration::from_secs(5),
                failure_rate: 0.0,
            }
        } else {
            Self::Ffmpeg {
                ffmpeg: "ffmpeg".into(),
                ffprobe: "ffprobe".into(),
                timeout: Duration::from_secs(600),
            }
        }
    }
}

/// The service's routes and background work.
///
/// # Errors
/// Its store cannot be opened.
#[allow(clippy::unused_async)]
pub async fn domain(_opts: &ServiceOpts, _rt: &Runtime) -> Result<Domain, KernelError> {
    Ok(Domain::default())
}
