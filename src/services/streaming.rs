//! streaming (9093): byte ranges of originals and HLS playlists and segments
//! from the blob store, read lazily, plus viewing sessions announced as events.

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::streaming_service_server::StreamingServiceServer;
use crate::services::{Common, Domain};

pub mod error;
mod read;
pub mod server;
pub mod sessions;

pub use error::StreamingError;
pub use server::StreamingServer;

/// Largest chunk of a ReadRange stream (the proto's limit).
pub const CHUNK_BYTES: usize = 1 << 20;
/// Largest playlist served.
pub const MAX_PLAYLIST_BYTES: usize = 1 << 20;
/// Largest segment served.
pub const MAX_SEGMENT_BYTES: usize = 16 << 20;
/// Largest thumbnail served (what the transcoder uploads at most).
pub const MAX_THUMBNAIL_BYTES: usize = 4 << 20;
/// Largest encoded message of the service (clients size their decoders by it).
pub const MAX_MESSAGE_BYTES: usize = MAX_SEGMENT_BYTES + (64 << 10);

/// The streaming service's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Viewing sessions kept at once (the oldest go first).
    pub max_live_sessions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_live_sessions: sessions::MAX_LIVE_SESSIONS,
        }
    }
}

/// The service's routes (it has no background work).
///
/// # Errors
/// None today; the signature matches the other services.
#[allow(clippy::unused_async)]
pub async fn domain(
    config: &Config,
    _common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let server = StreamingServer::new(
        runtime.blobs.clone(),
        runtime.bus.clone(),
        config.max_live_sessions,
    );
    let svc = StreamingServiceServer::new(server)
        // The largest answer is a segment; leave room for its envelope.
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Domain {
        routes: Routes::new(svc),
        grpc_names: vec![
            <StreamingServiceServer<StreamingServer> as tonic::server::NamedService>::NAME,
        ],
        ..Domain::default()
    })
}
