//! The public HTTP edge server (production): HTTP/1.1 and HTTP/2 on one
//! port from an accept loop of our own: on a plaintext port requests
//! without a body go to a small HTTP/1.1 server that sends files by
//! `sendfile(2)` ([`files`]), and a connection that brings a request with a
//! body, an upgrade or HTTP/2 is handed to hyper 1, which serves TLS ports
//! whole, so that no client can
//! hold the server: caps on open connections (in all, and per client), a
//! deadline for each request head, an idle timeout for kept-alive
//! connections and a send timeout for responses the client does not take.
//!
//! Each connection has a watchdog ([`io::Activity`]): idle (no request in
//! flight, no byte of the next) for `idle_timeout`, or a request head begun
//! and not whole after `header_timeout`, closes it. At the cap in all, an
//! idle connection (of the oldest, the one idle the longest) is closed to
//! make room for a new one ([`conns`]), so idle connections never keep a
//! client out. A connection over a cap is answered with a short HTTP/1.1
//! 429 (this client's share) or 503 (the server's: every connection busy)
//! with a JSON body, then closed; on a TLS port ([`tls`]) only closed.
//! Under madsim the simulated transport serves instead (`sim_transport`,
//! see [`super::transport::serve_edge`]).

mod conns;
mod files;
mod io;
mod tls;

pub(super) use tls::acceptor as tls_acceptor;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tonic::body::Body;
use tower::Service;

use conns::{Connections, Refusal};
use io::{Activity, EdgeIo, Prefixed};

use super::transport::{EdgeLimits, MAX_FRAME_BYTES, PeerAddr, client_of};
use super::{BoxError, now, sleep, sleep_until, spawn, timeout};

/// Connections over a cap being answered at once; past it, one is closed
/// without an answer (answering costs a task and a socket for a second).
const MAX_REFUSING: usize = 256;
/// How long answering a refused connection may take in all.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// What is read (and dropped) of a refused connection's request after the
/// answer, so that closing it does not reset the answer away.
const REFUSAL_DRAIN_BYTES: usize = 16 << 10;
/// Pause after a failed accept (out of file descriptors, say) before the
/// next, so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Most streams one HTTP/2 connection may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// How a port speaks HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// hyper: HTTP/1.1 and HTTP/2, with TLS if the port has it.
    Hyper,
    /// Plaintext HTTP/1.1 with file bodies sent by `sendfile(2)`
    /// ([`files`]); a request it leaves to hyper (a body, an upgrade,
    /// HTTP/2) hands the connection to hyper.
    Files,
}

/// Serves `svc` on `listener` within `limits` until `shutdown` resolves;
/// then stops accepting, lets each connection finish the requests it has
/// (HTTP/2: GOAWAY) and returns once all are closed. Dropping the future
/// closes every connection at once.
pub(super) async fn serve<S, B>(
    listener: TcpListener,
    svc: S,
    limits: EdgeLimits,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let connections = Arc::new(Connections::new(
        limits.max_connections,
        limits.max_connections_per_client,
    ));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let builder = Arc::new(builder());
    // true: finish what you have and close; the sender dropped: close now.
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = connections.room() => {}
        }
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Responses are written whole; waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(now()));
        match connections.open(client_of(peer.ip()), activity.clone()) {
            Ok(open) => {
                let conn = Connection {
                    svc: svc.clone(),
                    peer,
                    limits,
                    tls: tls.clone(),
                    protocol,
                    builder: builder.clone(),
                    stopping: stopping.clone(),
                };
                spawn(conn.run(stream, activity, open));
            }
            // A refusal is a plain HTTP answer: on a TLS port the
            // connection is only closed.
            Err(_) if tls.is_some() => drop(stream),
            Err(refusal) => {
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    spawn(async move {
                        refuse(stream, refusal, peer.ip()).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    connections.all_closed().await;
}

/// hyper's connection settings: HTTP/1.1 without hyper's own head timeout
/// (the watchdog has one that does not also cut idle connections), and
/// HTTP/2 with the transport's frame size.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_frame_size(MAX_FRAME_BYTES)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// One accepted connection and what it needs to be served.
struct Connection<S> {
    svc: S,
    peer: SocketAddr,
    limits: EdgeLimits,
    tls: Option<TlsAcceptor>,
    protocol: Protocol,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopping: watch::Receiver<bool>,
}

impl<S> Connection<S> {
    /// Serves the connection until it ends, its watchdog closes it, it is
    /// told to close while idle to make room, or the server stops; `open`
    /// counts it meanwhile.
    async fn run<B>(mut self, stream: TcpStream, activity: Arc<Activity>, open: conns::Open)
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let limits = self.limits;
        let plain = EdgeIo::new(stream, activity.clone(), limits.send_timeout);
        if self.protocol == Protocol::Files {
            let conn = pin!(files::serve(
                plain,
                self.svc.clone(),
                self.peer,
                activity.clone(),
                limits.send_timeout,
                self.stopping.clone(),
            ));
            // `files::serve` sees the server stopping itself, between requests.
            let graceful = |_: Pin<&mut _>| {};
            let handed = watchdog(
                conn,
                self.peer,
                &activity,
                &open,
                limits,
                self.stopping.clone(),
                graceful,
            )
            .await;
            // A request it leaves to hyper: hyper serves the connection
            // from there on, starting with the bytes already read.
            if let Some(Some(files::HandOver { io, read })) = handed {
                self.hyper(Prefixed::new(read, io), activity, open).await;
            }
            return;
        }
        let io = match self.tls.take() {
            None => Either::Left(plain),
            // The handshake has the head's deadline. Its first byte starts
            // a head (Activity), so the connection is not chosen to make
            // room once the handshake is under way (one chosen just before
            // its first byte is kept, and closes by its own deadlines).
            Some(acceptor) => match timeout(limits.header_timeout, acceptor.accept(plain)).await {
                Ok(Ok(tls)) => Either::Right(tls),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "TLS handshake not done within the header timeout");
                    return;
                }
            },
        };
        self.hyper(io, activity, open).await;
    }

    /// Serves the connection `io` with hyper until it ends, its watchdog
    /// closes it, or the server stops.
    async fn hyper<I, B>(self, io: I, activity: Arc<Activity>, open: conns::Open)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let limits = self.limits;
        let io = TokioIo::new(io);
        let svc = TowerToHyperService::new(Tracked {
            inner: self.svc,
            peer: self.peer,
            activity: activity.clone(),
        });
        let conn = pin!(self.builder.serve_connection(io, svc));
        watchdog(
            conn,
            self.peer,
            &activity,
            &open,
            limits,
            self.stopping,
            |conn| {
                conn.graceful_shutdown();
            },
        )
        .await;
    }
}

/// Runs the connection `conn` until it ends, its deadlines pass (idle, or a
/// request head late), it is told to close while idle to make room, or the
/// server stops: then `graceful` asks it to finish what it has (and it is
/// dropped at once if the server's sender is gone).
async fn watchdog<F, T, E>(
    mut conn: Pin<&mut F>,
    peer: SocketAddr,
    activity: &Activity,
    open: &conns::Open,
    limits: EdgeLimits,
    mut stopping: watch::Receiver<bool>,
    graceful: impl Fn(Pin<&mut F>),
) -> Option<T>
where
    F: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut stopped = *stopping.borrow_and_update();
    if stopped {
        graceful(conn.as_mut());
    }
    // While requests are in flight there is no deadline here; look again
    // this often.
    let recheck = limits.header_timeout.min(limits.idle_timeout);
    loop {
        let wake = activity
            .expires(limits.idle_timeout, limits.header_timeout)
            .unwrap_or_else(|| now() + recheck);
        tokio::select! {
            biased;
            served = conn.as_mut() => {
                return match served {
                    Ok(out) => Some(out),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                        None
                    }
                };
            }
            () = open.evicted() => {
                if activity.idle_since().is_some() {
                    tracing::debug!(%peer, "idle connection closed to make room for a new one");
                    return None;
                }
                // A request began since it was chosen: it is served,
                // and the connection closes by its own deadlines.
            }
            changed = stopping.changed() => match changed {
                Ok(()) if !stopped => {
                    graceful(conn.as_mut());
                    stopped = true;
                }
                Ok(()) => {}
                Err(_) => return None,
            },
            () = sleep_until(wake) => {
                let expired = activity
                    .expires(limits.idle_timeout, limits.header_timeout)
                    .is_some_and(|at| at <= now());
                if expired {
                    tracing::debug!(%peer, "connection idle or its request head late: closed");
                    return None;
                }
            }
        }
    }
}

/// Answers a connection over a cap: 429 when its client holds its share,
/// 503 when the server is full, each with a JSON body, then closes it.
async fn refuse(mut stream: TcpStream, refusal: Refusal, client: IpAddr) {
    let (status, message) = match refusal {
        Refusal::ClientFull => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this client address",
        ),
        Refusal::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections: try again shortly",
        ),
    };
    tracing::debug!(%client, %status, "connection refused");
    let body = serde_json::json!({ "error": message }).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing a socket with unread bytes resets the connection, and a
        // reset can destroy the answer before the client reads it: read
        // what the client sends until it closes too (bounded).
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// The service as a connection runs it: requests carry their [`PeerAddr`]
/// and count as in flight on the connection until their response is sent
/// (or abandoned); an error of the service becomes a 500 with a JSON body.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The stacks served here are always ready (axum's router); an
        // error would say so on the call.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(PeerAddr(self.peer));
        let peer = self.peer;
        let served = self.inner.call(req);
        Box::pin(async move {
            let response = match served.await {
                Ok(response) => response.map(Body::new),
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::error!(%peer, error = %e, "the HTTP service failed");
                    let body = serde_json::json!({ "error": "internal error" }).to_string();
                    let mut response =
                        Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                }
            };
            Ok(response.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight on the connection
    /// until it is sent or dropped.
    struct TrackedBody {
        #[pin]
        inner: Body,
        _busy: io::Busy,
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
