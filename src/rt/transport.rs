//! The transport seam: a client [`Channel`], the gRPC server loop
//! ([`serve`]) and the public HTTP edge's ([`serve_edge`]).
//!
//! In production the first two are tonic's HTTP/2 transport over tokio
//! sockets, and the edge is `super::edge` (hyper, with connection caps and
//! timeouts). Under madsim all three are `super::sim_transport`: the same
//! tonic-generated clients and servers, the same tower layers and
//! prost-encoded bytes, carried over madsim's simulated TCP instead of hyper.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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

/// The address a request came from (its TCP peer): a request extension the
/// server loops set, in production and in the simulator alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The client as per-client limits count it (see [`client_of`]).
    #[must_use]
    pub fn client(self) -> IpAddr {
        client_of(self.0.ip())
    }
}

/// The client an address belongs to, for per-client limits: an IPv4 address
/// itself (an IPv4-mapped IPv6 address too), an IPv6 address's /64 prefix
/// (a host is usually given a whole /64, so counting single addresses
/// would give one client 2^64 shares).
#[must_use]
pub fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

/// What the public HTTP edge ([`serve_edge`]) allows each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Connections open at once, in all (past it an idle one
    /// is closed to make room; when none is idle, more get 503).
    pub max_connections: usize,
    /// Connections open at once from one client ([`client_of`]; more get 429).
    pub max_connections_per_client: usize,
    /// From the first byte of a request head to its last.
    pub header_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle_timeout: Duration,
    /// How long a write may wait for the client to take bytes.
    pub send_timeout: Duration,
}

impl EdgeLimits {
    /// Default of [`EdgeLimits::max_connections`]: within the 1024 file
    /// descriptors a process is commonly allowed, less the service's own.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// Default of [`EdgeLimits::max_connections_per_client`]: a browser
    /// opens 6 per host, so a NAT with 20 busy browsers behind it fits.
    pub const MAX_CONNECTIONS_PER_CLIENT: usize = 128;
    /// Default of [`EdgeLimits::header_timeout`].
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of [`EdgeLimits::idle_timeout`] (nginx keeps 75 s).
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default of [`EdgeLimits::send_timeout`] (nginx waits 60 s).
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_connections: Self::MAX_CONNECTIONS,
            max_connections_per_client: Self::MAX_CONNECTIONS_PER_CLIENT,
            header_timeout: Self::HEADER_TIMEOUT,
            idle_timeout: Self::IDLE_TIMEOUT,
            send_timeout: Self::SEND_TIMEOUT,
        }
    }
}

/// A response extension saying its body is the bytes `[from, end)` of
/// `file`: on a plaintext edge port ([`serve_edge`] without TLS) they are
/// sent from the file by `sendfile(2)` and the response's body is dropped
/// unread; on a TLS port, and in the simulator, the body (which must carry
/// the same bytes) is sent. The response's `Content-Length` must be
/// `end - from`.
#[derive(Debug, Clone)]
pub struct SendFile {
    /// The open file.
    pub file: std::sync::Arc<std::fs::File>,
    /// First byte sent.
    pub from: u64,
    /// One past the last byte sent.
    pub end: u64,
}

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

/// The peer address of the connection a served request came on, if the
/// transport recorded it (requests made in-process have none).
#[must_use]
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(*addr);
    }
    if let Some(peer) = extensions.get::<MtlsPeer>() {
        return Some(peer.addr);
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

/// Connections the kernel completes and holds until they are accepted
/// (capped by `net.core.somaxconn`). std's 128 overflows in a burst of new
/// connections (a flash crowd, or the edge closing idle ones to make room
/// as fast as they come), and an overflowing queue drops the client's
/// handshake, which it retries only after a second or more; nginx uses 511
/// and Go the system's cap.
#[cfg(not(madsim))]
const LISTEN_BACKLOG: u32 = 1024;

/// TLS on the public HTTP port: the PEM files of the certificate chain
/// (leaf first) and of its private key, read at start and again whenever
/// they change (production: `rt/edge/tls.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTls {
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// Why the TLS files cannot be served (the message names the file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The public port's TLS, loaded and ready to serve.
#[derive(Clone)]
pub struct EdgeAcceptor {
    #[cfg(not(madsim))]
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for EdgeAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeAcceptor")
    }
}

impl EdgeTls {
    /// Reads the files: a pair that does not load stops the start here.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it; under
    /// madsim always (the simulator's transport has no TLS: the swarm's
    /// gateways serve plain HTTP).
    pub fn acceptor(&self) -> Result<EdgeAcceptor, TlsError> {
        #[cfg(not(madsim))]
        {
            super::edge::tls_acceptor(self).map(|inner| EdgeAcceptor { inner })
        }
        #[cfg(madsim)]
        {
            Err(TlsError(
                "TLS on the public port is not simulated".to_owned(),
            ))
        }
    }
}

/// Mutual TLS between services: the PEM files of the cluster CA (one or
/// more certificates, all trusted), of this instance's certificate chain
/// (leaf first, naming its service: `rt/mtls.rs`) and of its key; read at
/// start and again whenever they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTls {
    /// The cluster CA's certificates.
    pub ca: std::path::PathBuf,
    /// This instance's certificate chain.
    pub cert: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// Whether `name` is a service name an identity may carry (a certificate,
/// a service token, a call policy's caller): 1 to 64 of `[A-Za-z0-9-]`.
#[must_use]
pub fn valid_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The simulator's model of a service certificate (`sim_transport.rs`).
#[cfg(madsim)]
pub use super::sim_transport::SimCert;

/// This instance's service identity, loaded: what [`serve_mtls`] and
/// [`channel_to`] present and verify with.
#[derive(Clone)]
pub struct Mtls {
    #[cfg(not(madsim))]
    inner: std::sync::Arc<super::mtls::Reloader>,
    #[cfg(madsim)]
    inner: std::sync::Arc<super::sim_transport::SimIdentity>,
    service: std::sync::Arc<str>,
}

impl std::fmt::Debug for Mtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtls")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Mtls {
    /// The service this instance's certificate names.
    #[must_use]
    pub fn service(&self) -> &str {
        &self.service
    }

    /// A simulated identity: `cert`, trusting the certificates issued by
    /// the CAs named in `trusted` (as the CA file's certificates).
    ///
    /// # Errors
    /// The certificate names no valid service.
    #[cfg(madsim)]
    pub fn simulated(cert: SimCert, trusted: Vec<String>) -> Result<Self, TlsError> {
        Ok(Self {
            service: cert.service.clone().into(),
            inner: std::sync::Arc::new(super::sim_transport::SimIdentity::new(cert, trusted)?),
        })
    }

    /// Replaces the simulated certificate and trusted CAs, as rewriting the
    /// three files does in production (the next connections use them).
    ///
    /// # Errors
    /// The certificate names another service than this identity's (the
    /// last set stays, as the production reloader keeps it).
    #[cfg(madsim)]
    pub fn rotate(&self, cert: SimCert, trusted: Vec<String>) -> Result<(), TlsError> {
        self.inner.rotate(cert, trusted)
    }
}

impl ServiceTls {
    /// Reads the files: a set that does not load stops the start here.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and what is wrong with it; under
    /// madsim always (the simulator's transport has no TLS).
    pub fn load(&self) -> Result<Mtls, TlsError> {
        #[cfg(not(madsim))]
        {
            let inner = super::mtls::Reloader::load(self)?;
            Ok(Mtls {
                service: inner.service().into(),
                inner: std::sync::Arc::new(inner),
            })
        }
        #[cfg(madsim)]
        {
            Err(TlsError(
                "mutual TLS between services is not simulated".to_owned(),
            ))
        }
    }
}

/// The verified peer of a call that came over mutual TLS: a request
/// extension [`serve_mtls`] sets, naming the service the client's
/// certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsPeer {
    /// The TCP peer.
    pub addr: SocketAddr,
    /// The service its certificate names.
    pub service: std::sync::Arc<str>,
}

/// A channel to the instance of `service` at `addr`: plaintext when `tls`
/// is `None` (as [`channel`]), else over mutual TLS, presenting `tls` and
/// accepting only a server whose certificate names `service`.
#[must_use]
pub fn channel_to(addr: SocketAddr, tls: Option<&Mtls>, service: &str) -> Channel {
    match tls {
        #[cfg(not(madsim))]
        Some(tls) => super::mtls::channel(addr, tls.inner.clone(), service),
        #[cfg(madsim)]
        Some(tls) => {
            super::sim_transport::SimChannel::new(addr).with_tls(tls.inner.clone(), service)
        }
        None => channel(addr),
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
        let inner = {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            // As std's listeners do: a restarted service rebinds its port
            // while the last one's connections are in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)?
        };
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
        super::sim_transport::serve(
            listener.inner,
            layer.layer(routes.prepare()),
            None,
            shutdown,
        )
        .await
        .map_err(|e| TransportError(Box::new(e)))
    }
}

/// As [`serve`], over mutual TLS with `tls` when it is given: a client
/// must present a certificate of the cluster CA naming a service, which
/// each of its requests then carries as [`MtlsPeer`].
///
/// # Errors
/// The accept loop failed.
pub async fn serve_mtls<L, ResBody>(
    listener: Listener,
    routes: Routes,
    layer: L,
    tls: Option<Mtls>,
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
    match tls {
        #[cfg(not(madsim))]
        Some(tls) => {
            let incoming = super::mtls::incoming(listener.inner, tls.inner);
            tonic::transport::Server::builder()
                .max_frame_size(MAX_FRAME_BYTES)
                .layer(layer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|e| TransportError(Box::new(e)))
        }
        #[cfg(madsim)]
        Some(tls) => super::sim_transport::serve(
            listener.inner,
            layer.layer(routes.prepare()),
            Some(tls.inner),
            shutdown,
        )
        .await
        .map_err(|e| TransportError(Box::new(e))),
        None => serve(listener, routes, layer, shutdown).await,
    }
}

/// Serves the public HTTP edge: `routes` behind `layer` on `listener`,
/// HTTP/1.1 and HTTP/2 on one port, within `limits`, until `shutdown`
/// resolves; then drains the connections already accepted. Each request
/// carries its [`PeerAddr`]. With `tls`, hyper serves every connection;
/// without, requests without a body are served by the edge's own
/// HTTP/1.1, which sends [`SendFile`] responses by `sendfile(2)`, and a
/// connection that brings a request with a body, an upgrade or HTTP/2 is
/// served by hyper from that request on.
///
/// Under madsim this is the simulated transport's loop, which keeps none of
/// `limits`: it opens one connection per call, and madsim's TCP never makes
/// a writer wait, so a client that does not read cannot hold a response
/// there. What it does model are request bodies that come slowly or never
/// (the deadlines above the transport run on the simulated clock).
///
/// # Errors
/// The accept loop failed (the simulator's; production's never does: a
/// failed accept is logged and retried).
pub async fn serve_edge<L, ResBody>(
    listener: Listener,
    routes: Routes,
    layer: L,
    limits: EdgeLimits,
    tls: Option<EdgeAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), TransportError>
where
    L: Layer<Routes> + Clone,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<crate::rt::BoxError> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<crate::rt::BoxError> + Send,
{
    let svc = layer.layer(routes.prepare());
    #[cfg(not(madsim))]
    {
        let (tls, protocol) = match tls {
            Some(tls) => (Some(tls.inner), super::edge::Protocol::Hyper),
            None => (None, super::edge::Protocol::Files),
        };
        super::edge::serve(listener.inner, svc, limits, tls, protocol, shutdown).await;
        Ok(())
    }
    #[cfg(madsim)]
    {
        let _ = (limits, tls);
        super::sim_transport::serve(listener.inner, svc, None, shutdown)
            .await
            .map_err(|e| TransportError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_or_ipv6_prefixes() {
        let v4: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(client_of(v4), v4);
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert_eq!(client_of(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(
            client_of(a),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_of(a), client_of(b), "one /64, one client");
        assert_ne!(client_of(a), client_of(other));
    }
}
