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
    /// The media port, if one is served (`--media-listen`).
    pub media: Option<MediaPort>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_live_sessions: sessions::MAX_LIVE_SESSIONS,
            media: None,
        }
    }
}

/// A port serving signed playback URLs (`/v1/play/{grant}/...`) straight
/// from streaming's own file store, originals and segments by
/// `sendfile(2)`, so that no gateway relays the bytes (a gateway's
/// `--media-url` points players at it). Blobs not in local files (an
/// object store) are streamed through ReadRange, as on a gateway. The gateway's handlers, caching
/// headers, CORS and limits ([`crate::services::gateway::media_routes`]);
/// plaintext HTTP ([`crate::rt::transport::serve_edge`] without TLS): put TLS in
/// front of it (a CDN or a terminating proxy), as for nginx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPort {
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// The edge's settings it keeps (limits, CORS, trusted proxies).
    pub http: crate::services::gateway::Config,
}

/// The service's routes, and its media port when it has one.
///
/// # Errors
/// The media port could not be bound.
pub async fn domain(
    config: &Config,
    _common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let mut background = crate::services::Background::default();
    if let Some(port) = &config.media {
        background.tasks.push(serve_media(port, runtime).await?);
    }
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
        background,
        ..Domain::default()
    })
}

/// Binds and serves the media port (stopped by aborting the task).
async fn serve_media(
    port: &MediaPort,
    runtime: &Runtime,
) -> Result<crate::rt::JoinHandle<()>, KernelError> {
    use crate::rt::transport;
    let name = crate::services::ServiceKind::Streaming.name();
    let listener = transport::Listener::bind(port.listen)
        .await
        .map_err(|e| KernelError::start(name, "the media port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| KernelError::start(name, "the media port", e))?;
    let routes = crate::services::gateway::media_routes(runtime.clone(), &port.http).layer(
        crate::middleware::metrics::HttpMetricsLayer::new(&runtime.metrics),
    );
    let serving = transport::serve_edge(
        listener,
        tonic::service::Routes::from(routes),
        crate::middleware::stack::public_http(runtime.metrics.clone()),
        port.http.edge,
        None,
        std::future::pending(),
    );
    tracing::info!(service = name, %addr, "media port serving");
    Ok(crate::rt::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the media port stopped");
        }
    }))
}
