//! The gRPC transport seam: a client [`Channel`] and a server loop ([`serve`]).
//!
//! In production both are tonic's HTTP/2 transport over tokio sockets. Under
//! madsim they are `super::sim_transport`: the same tonic-generated clients
//! and servers, the same tower layers and prost-encoded bytes, carried over
//! madsim's simulated TCP instead of hyper.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::service::Routes;
use tower::{Layer, Service};

/// Time allowed to open a connection before a call fails with UNAVAILABLE.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest HTTP/2 frame either side accepts (the protocol's default is
/// 16 KiB): a 1 MiB chunk of a video then crosses in 4 frames, not 64.
pub const MAX_FRAME_BYTES: u32 = 256 << 10;

/// A cheap-to-clone client channel to one address; tonic-generated clients
/// are generic over it (`XServiceClient<Channel>`).
#[cfg(not(madsim))]
pub type Channel = tonic::transport::Channel;
#[cfg(madsim)]
pub type Channel = super::sim_transport::SimChannel;

/// A channel to `addr` that connects on first use and reconnects after failures.
#[must_use]
pub fn channel(addr: SocketAddr) -> Channel {
    #[cfg(not(madsim))]
    {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address always forms a valid URI")
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .max_frame_size(MAX_FRAME_BYTES)
            .connect_lazy()
    }
    #[cfg(madsim)]
    {
        super::sim_transport::SimChannel::new(addr)
    }
}

/// The peer address of a served request's connection, in its extensions.
/// The simulator's transport inserts it; tonic's inserts its own
/// `TcpConnectInfo`, which [`peer_addr`] reads as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address of the connection a served request came on, if the
/// transport recorded it (requests made in-process have none).
#[must_use]
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(*addr);
    }
    #[cfg(not(madsim))]
    {
        extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
    }
    #[cfg(madsim)]
    {
        None
    }
}

/// A bound listening socket, ready for [`serve`].
#[derive(Debug)]
pub struct Listener {
    #[cfg(not(madsim))]
    inner: tokio::net::TcpListener,
    #[cfg(madsim)]
    inner: madsim::net::TcpListener,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The socket could not be bound (address in use, permission ...).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        #[cfg(not(madsim))]
        let inner = tokio::net::TcpListener::bind(addr).await?;
        #[cfg(madsim)]
        let inner = madsim::net::TcpListener::bind(addr).await?;
        Ok(Self { inner })
    }

    /// The address actually bound.
    ///
    /// # Errors
    /// The OS could not report it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A failure of the server loop itself (not of one request).
#[derive(Debug, thiserror::Error)]
#[error("transport: {0}")]
pub struct TransportError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Serves `routes` (gRPC services, plus any HTTP routes merged into them)
/// behind `layer` on `listener` until `shutdown` resolves, then drains the
/// connections already accepted.
///
/// # Errors
/// The accept loop failed.
pub async fn serve<L, ResBody>(
    listener: Listener,
    routes: Routes,
    layer: L,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError>
where
    L: Layer<Routes> + Clone,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send,
    <L::Service as Service<Request<Body>>>::Error: Into<crate::rt::BoxError> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<crate::rt::BoxError> + Send,
{
    #[cfg(not(madsim))]
    {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener.inner).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .accept_http1(true)
            .max_frame_size(MAX_FRAME_BYTES)
            .layer(layer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| TransportError(Box::new(e)))
    }
    #[cfg(madsim)]
    {
        super::sim_transport::serve(listener.inner, layer.layer(routes.prepare()), shutdown)
            .await
            .map_err(|e| TransportError(Box::new(e)))
    }
}
