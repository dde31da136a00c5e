//! transcoder (9092): turns an original into HLS renditions and a thumbnail
//! (ffmpeg subprocesses; a timed model in the simulator).

use std::path::PathBuf;
use std::time::Duration;

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::transcoder_service_server::TranscoderServiceServer;
use crate::rt;
use crate::services::{Background, Common, Domain};

pub mod engine;
pub mod error;
#[cfg(not(madsim))]
pub mod ffmpeg;
pub mod hls;
pub mod model;
#[cfg(not(madsim))]
pub mod process;
pub mod run;
pub mod server;
pub mod state;

pub use error::TranscoderError;
pub use server::TranscoderServer;

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

/// The transcoder's own settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// How videos are transcoded.
    pub engine: Engine,
}

/// Where work dirs go: under the data dir (cleared of a crashed run's
/// leftovers on start), else under the system's temporary directory.
async fn work_root(common: &Common) -> Result<PathBuf, KernelError> {
    let Some(dir) = &common.data_dir else {
        return Ok(std::env::temp_dir().join("streamgate-transcoder"));
    };
    let root = dir.join("transcoder-work");
    #[cfg(not(madsim))]
    {
        let clear = root.clone();
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| {
            KernelError::start("transcoder", "its work dir", e)
        };
        rt::blocking(move || match std::fs::remove_dir_all(&clear) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(|e| fail(e.into()))?;
    }
    Ok(root)
}

/// The service's routes and its executor (stopped on shutdown, which ends
/// every transcode in flight).
///
/// # Errors
/// Leftover work dirs cannot be removed.
pub async fn domain(
    config: &Config,
    common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let ctx = engine::Context {
        blobs: runtime.blobs.clone(),
        work_root: work_root(common).await?,
    };
    let (shared, executor) = run::Shared::new(
        config.engine.clone(),
        ctx,
        runtime.bus.clone(),
        runtime.metrics.clone(),
    );
    let svc = TranscoderServiceServer::new(TranscoderServer::new(shared));
    Ok(Domain {
        routes: Routes::new(svc),
        grpc_names: vec![
            <TranscoderServiceServer<TranscoderServer> as tonic::server::NamedService>::NAME,
        ],
        background: Background {
            tasks: vec![rt::spawn(executor)],
            ..Background::default()
        },
        ..Domain::default()
    })
}

#[cfg(test)]
mod tests;
