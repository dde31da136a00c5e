//! The gRPC transport under madsim: tonic-generated clients and servers, the
//! same tower layers, and prost-encoded HTTP bodies carried over madsim's
//! simulated TCP (one connection per call, length-prefixed frames).
//!
//! A call is `Head, Data*, (Trailers | End)` in each direction, so unary and
//! streaming calls (client, server, bidirectional) all work. Every call has a
//! deadline (`grpc-timeout`, else [`DEFAULT_CALL_TIMEOUT`]) on both sides,
//! because a clogged peer is silent. Transport failures surface as
//! UNAVAILABLE, as with tonic's real transport.
//!
//! Mutual TLS is modelled, not run: a [`SimCert`] names a service, its
//! issuing CA, a serial and a validity window on the simulated wall clock.
//! On a connection to or from a [`SimIdentity`] both ends first send their
//! certificate (`Hello`) and verify the other's as `rt/mtls.rs` has
//! rustls do: issued by a trusted CA, valid now, naming a service, and, on
//! the client's side, naming the service it meant to call. The side that
//! refuses sends a fatal alert and closes (under TLS 1.3 a client refused
//! by the server learns it from the alert that comes where its response
//! should: the caller sees UNAVAILABLE), and no request reaches the
//! server's layers; a verified client's requests carry
//! [`super::transport::MtlsPeer`]. The handshake costs one round trip and
//! [`HANDSHAKE_CPU`] on each side. The identity's certificate can be
//! replaced at any time ([`SimIdentity::rotate`]), as rewriting the files
//! does in production; the next connections use the new one.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::BoxError;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use madsim::net::{TcpListener, TcpStream};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::Status;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use super::{Instant, JoinHandle, now, spawn, timeout, timeout_at};
use crate::grpc_timeout;

/// The deadline of a call that does not set `grpc-timeout`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server waits for a request's head after accepting.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame accepted on the wire.
const MAX_FRAME_BYTES: u32 = 8 << 20;
/// Data larger than this is split over several frames.
const DATA_CHUNK_BYTES: usize = 1 << 20;
/// The processor time one side of a TLS 1.3 handshake takes (an ECDHE
/// exchange, a P-256 signature and the verification of the other's chain:
/// a few hundred microseconds on one core), spent before each side sends
/// its certificate.
pub const HANDSHAKE_CPU: Duration = Duration::from_micros(400);

/// A simulated service certificate.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SimCert {
    /// The service it names (the URI SAN `spiffe://streamgate/<service>`).
    #[prost(string, tag = "1")]
    pub service: String,
    /// The CA that issued it.
    #[prost(string, tag = "2")]
    pub issuer: String,
    /// Told apart from the other certificates of its CA.
    #[prost(uint64, tag = "3")]
    pub serial: u64,
    /// Valid from (Unix ms, the simulated wall clock: [`super::unix_ms`]).
    #[prost(uint64, tag = "4")]
    pub not_before_ms: u64,
    /// Valid until (Unix ms).
    #[prost(uint64, tag = "5")]
    pub not_after_ms: u64,
}

impl SimCert {
    /// Why `self` is not to be trusted by one trusting `trusted` at
    /// `now_ms` (the checks of a WebPKI verifier and `mtls::service_of`).
    ///
    /// # Errors
    /// The TLS alert the refusing side sends (all the other side learns),
    /// and what is wrong, for the log.
    pub fn verify(&self, trusted: &[String], now_ms: u64) -> Result<(), (&'static str, String)> {
        if !trusted.contains(&self.issuer) {
            return Err((
                "unknown CA",
                format!(
                    "certificate {} issued by an unknown CA ({})",
                    self.serial, self.issuer
                ),
            ));
        }
        if now_ms < self.not_before_ms || now_ms > self.not_after_ms {
            return Err((
                "certificate expired",
                format!(
                    "certificate {} not valid now (expired or not yet valid)",
                    self.serial
                ),
            ));
        }
        if !super::transport::valid_service(&self.service) {
            return Err((
                "bad certificate",
                format!("certificate {} names no service", self.serial),
            ));
        }
        Ok(())
    }
}

/// A simulated node's mutual-TLS identity: its certificate and the CAs it
/// trusts, replaceable while connections use them.
#[derive(Debug)]
pub struct SimIdentity {
    current: Mutex<(SimCert, Vec<String>)>,
}

impl SimIdentity {
    /// `cert`, trusting the certificates `trusted` issued.
    ///
    /// # Errors
    /// The certificate names no valid service.
    pub fn new(cert: SimCert, trusted: Vec<String>) -> Result<Self, super::transport::TlsError> {
        if !super::transport::valid_service(&cert.service) {
            return Err(super::transport::TlsError(format!(
                "certificate {} names no service",
                cert.serial
            )));
        }
        Ok(Self {
            current: Mutex::new((cert, trusted)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (SimCert, Vec<String>)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Its certificate and trusted CAs now.
    #[must_use]
    pub fn current(&self) -> (SimCert, Vec<String>) {
        self.lock().clone()
    }

    /// Replaces both; the next connections use them.
    ///
    /// # Errors
    /// `cert` names another service (the last set stays).
    pub fn rotate(
        &self,
        cert: SimCert,
        trusted: Vec<String>,
    ) -> Result<(), super::transport::TlsError> {
        let mut current = self.lock();
        if cert.service != current.0.service {
            return Err(super::transport::TlsError(format!(
                "certificate {} names {}, not {}: the last one stays",
                cert.serial, cert.service, current.0.service
            )));
        }
        *current = (cert, trusted);
        Ok(())
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Kind {
    #[prost(message, tag = "1")]
    Head(Head),
    #[prost(bytes = "bytes", tag = "2")]
    Data(Bytes),
    #[prost(message, tag = "3")]
    Trailers(Head),
    #[prost(bool, tag = "4")]
    End(bool),
    /// A side's certificate: the first frame each way on a TLS connection.
    #[prost(message, tag = "5")]
    Hello(SimCert),
    /// A fatal TLS alert: the sender refused the handshake and closes.
    #[prost(string, tag = "6")]
    Alert(String),
}

/// Request head (path, headers) or response head (status, headers); also
/// used for trailers (headers only).
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(uint32, tag = "2")]
    status: u32,
    #[prost(message, repeated, tag = "3")]
    headers: Vec<WireHeader>,
    /// Request method (gRPC always uses POST; plain HTTP routes need it).
    #[prost(string, tag = "4")]
    method: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireHeader {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: Kind) -> io::Result<()> {
    let buf = Frame { kind: Some(kind) }.encode_to_vec();
    let len = u32::try_from(buf.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_BYTES)
        .ok_or_else(|| invalid("frame too large"))?;
    w.write_u32(len).await?;
    w.write_all(&buf).await?;
    w.flush().await
}

/// The next frame, or `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Kind>> {
    let len = match r.read_u32().await {
        Ok(len) => len,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME_BYTES {
        return Err(invalid(format!("frame of {len} bytes exceeds the limit")));
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await?;
    let frame = Frame::decode(buf.as_slice()).map_err(|e| invalid(e.to_string()))?;
    frame.kind.map(Some).ok_or_else(|| invalid("empty frame"))
}

fn headers_to_wire(headers: &HeaderMap) -> Vec<WireHeader> {
    headers
        .iter()
        .map(|(name, value)| WireHeader {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

fn wire_to_headers(wire: &[WireHeader]) -> io::Result<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(wire.len());
    for h in wire {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let value = HeaderValue::from_bytes(&h.value).map_err(|e| invalid(e.to_string()))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Writes every frame of `body`, then `End` (or the trailers, which end it).
async fn pump_body<B, W>(body: B, w: &mut W) -> io::Result<()>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    W: AsyncWrite + Unpin,
{
    let mut body = pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| io::Error::other(e.into()))?;
        match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    let chunk = data.split_to(data.len().min(DATA_CHUNK_BYTES));
                    write_frame(w, Kind::Data(chunk)).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let head = Head {
                        headers: headers_to_wire(&trailers),
                        ..Head::default()
                    };
                    return write_frame(w, Kind::Trailers(head)).await;
                }
            }
        }
    }
    write_frame(w, Kind::End(true)).await
}

/// Aborts a helper task when the body that owns it is dropped.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A body read frame by frame from `reader` until trailers or `End`, each
/// read bounded by `deadline`.
fn body_from_reader<R>(reader: R, deadline: Instant, peer: SocketAddr, guard: AbortOnDrop) -> Body
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let stream = futures::stream::unfold(Some((reader, guard)), move |state| async move {
        let (mut reader, guard) = state?;
        let item = match timeout_at(deadline, read_frame(&mut reader)).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "deadline elapsed reading from {peer}"
            ))),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "connection to {peer} failed: {e}"
            ))),
            Ok(Ok(None)) => Err(Status::unavailable(format!(
                "connection to {peer} closed mid-stream"
            ))),
            Ok(Ok(Some(Kind::Data(data)))) => Ok(Some(http_body::Frame::data(data))),
            Ok(Ok(Some(Kind::Trailers(head)))) => match wire_to_headers(&head.headers) {
                Ok(trailers) => return Some((Ok(http_body::Frame::trailers(trailers)), None)),
                Err(e) => Err(Status::internal(format!("bad trailers from {peer}: {e}"))),
            },
            Ok(Ok(Some(Kind::End(_)))) => Ok(None),
            Ok(Ok(Some(Kind::Alert(alert)))) => Err(Status::unavailable(format!(
                "TLS handshake with {peer} failed: received fatal alert: {alert}"
            ))),
            Ok(Ok(Some(Kind::Head(_) | Kind::Hello(_)))) => {
                Err(Status::internal(format!("unexpected head from {peer}")))
            }
        };
        match item {
            Ok(Some(frame)) => Some((Ok(frame), Some((reader, guard)))),
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    });
    Body::new(StreamBody::new(stream))
}

/// A client channel to one simulated address.
#[derive(Clone, Debug)]
pub struct SimChannel {
    addr: SocketAddr,
    /// Mutual TLS: this side's identity and the service the server's
    /// certificate must name.
    tls: Option<(Arc<SimIdentity>, Arc<str>)>,
}

impl SimChannel {
    /// A channel to `addr`; each call opens its own connection.
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    /// The same over mutual TLS: presenting `identity`, accepting only a
    /// server whose certificate names `service`.
    #[must_use]
    pub fn with_tls(mut self, identity: Arc<SimIdentity>, service: &str) -> Self {
        self.tls = Some((identity, service.into()));
        self
    }
}

/// The client's side of the handshake: sends its certificate, then
/// verifies the server's.
async fn client_handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    (identity, service): &(Arc<SimIdentity>, Arc<str>),
    deadline: Instant,
    addr: SocketAddr,
) -> Result<(), Status>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let failed =
        |why: String| Status::unavailable(format!("TLS handshake with {addr} failed: {why}"));
    let (mine, trusted) = identity.current();
    super::sleep(HANDSHAKE_CPU).await;
    write_frame(writer, Kind::Hello(mine))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let theirs = match timeout_at(deadline, read_frame(reader)).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "deadline elapsed in the TLS handshake with {addr}"
            )));
        }
        Ok(Ok(Some(Kind::Hello(cert)))) => cert,
        Ok(Ok(_)) => return Err(failed("the connection closed".to_owned())),
        Ok(Err(e)) => return Err(failed(e.to_string())),
    };
    if let Err((alert, why)) = theirs.verify(&trusted, super::unix_ms()) {
        // As rustls does: tell the server, then give up.
        let _ = write_frame(writer, Kind::Alert(alert.to_owned())).await;
        return Err(failed(why));
    }
    if *theirs.service != **service {
        return Err(failed(format!(
            "its certificate names {}, not {service}",
            theirs.service
        )));
    }
    Ok(())
}

/// The server's side: sends its certificate, then verifies the client's;
/// the verified peer, or `None` (the connection is then closed).
async fn server_handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    identity: &SimIdentity,
    peer: SocketAddr,
) -> Option<super::transport::MtlsPeer>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mine, trusted) = identity.current();
    super::sleep(HANDSHAKE_CPU).await;
    write_frame(writer, Kind::Hello(mine)).await.ok()?;
    let theirs = match timeout(HEAD_TIMEOUT, read_frame(reader)).await {
        Ok(Ok(Some(Kind::Hello(theirs)))) => theirs,
        // A plaintext request, or a client that refused this side.
        Ok(Ok(Some(Kind::Head(_)))) => {
            tracing::info!(%peer, "service TLS handshake refused: no certificate");
            let _ = write_frame(writer, Kind::Alert("certificate required".to_owned())).await;
            return None;
        }
        _ => return None,
    };
    if let Err((alert, why)) = theirs.verify(&trusted, super::unix_ms())
        && !super::faults::injected(super::faults::Bug::PeerUnverified)
    {
        tracing::info!(%peer, error = why, "service TLS handshake refused");
        // Under TLS 1.3 the client has finished its side by now: it learns
        // of the refusal from this alert, where its response should be.
        let _ = write_frame(writer, Kind::Alert(alert.to_owned())).await;
        return None;
    }
    Some(super::transport::MtlsPeer {
        addr: peer,
        service: theirs.service.into(),
    })
}

impl Service<Request<Body>> for SimChannel {
    type Response = Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<Body>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(call(self.addr, self.tls.clone(), req))
    }
}

async fn call(
    addr: SocketAddr,
    tls: Option<(Arc<SimIdentity>, Arc<str>)>,
    req: Request<Body>,
) -> Result<Response<Body>, Status> {
    let limit = grpc_timeout::from_headers(req.headers()).unwrap_or(DEFAULT_CALL_TIMEOUT);
    let deadline = now() + limit;
    let connect_deadline = deadline.min(now() + super::transport::CONNECT_TIMEOUT);
    let stream = match timeout_at(connect_deadline, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(Status::unavailable(format!(
                "connecting to {addr} timed out"
            )));
        }
        Ok(Err(e)) => {
            return Err(Status::unavailable(format!(
                "connecting to {addr} failed: {e}"
            )));
        }
        Ok(Ok(stream)) => stream,
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    if let Some(tls) = &tls {
        client_handshake(&mut reader, &mut writer, tls, deadline, addr).await?;
    }
    let (parts, body) = req.into_parts();
    let head = Head {
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        status: 0,
        headers: headers_to_wire(&parts.headers),
        method: parts.method.as_str().to_owned(),
    };
    let sender = spawn(async move {
        if write_frame(&mut writer, Kind::Head(head)).await.is_ok() {
            // A failed write shows up on the read side as a reset connection.
            let _ = pump_body(body, &mut writer).await;
        }
    });
    let guard = AbortOnDrop(Some(sender));
    let head = match timeout_at(deadline, read_frame(&mut reader)).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "deadline of {limit:?} elapsed waiting for {addr}"
            )));
        }
        Ok(Err(e)) => {
            return Err(Status::unavailable(format!(
                "connection to {addr} failed: {e}"
            )));
        }
        Ok(Ok(None)) => return Err(Status::unavailable(format!("{addr} closed the connection"))),
        Ok(Ok(Some(Kind::Head(head)))) => head,
        Ok(Ok(Some(Kind::Alert(alert)))) => {
            return Err(Status::unavailable(format!(
                "TLS handshake with {addr} failed: received fatal alert: {alert}"
            )));
        }
        Ok(Ok(Some(Kind::Hello(_)))) => {
            return Err(Status::unavailable(format!(
                "{addr} requires a TLS handshake with a certificate; this channel has none"
            )));
        }
        Ok(Ok(Some(_))) => return Err(Status::internal(format!("{addr} sent no response head"))),
    };
    let headers = wire_to_headers(&head.headers)
        .map_err(|e| Status::internal(format!("bad response headers from {addr}: {e}")))?;
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|s| http::StatusCode::from_u16(s).ok())
        .ok_or_else(|| Status::internal(format!("bad HTTP status {} from {addr}", head.status)))?;
    let mut response = Response::new(body_from_reader(reader, deadline, addr, guard));
    *response.status_mut() = status;
    *response.version_mut() = Version::HTTP_2;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Accepts connections on `listener` and serves each call with `svc` until
/// `shutdown` resolves; then waits for the calls in flight (each is bounded
/// by its deadline). With `tls`, each connection first completes the
/// handshake, presenting `tls` and requiring a client certificate it
/// trusts.
pub async fn serve<S, ResBody>(
    listener: TcpListener,
    svc: S,
    tls: Option<Arc<SimIdentity>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let mut shutdown = pin!(shutdown);
    let mut in_flight: Vec<JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            // Fixed polling order: tokio's random one would differ between
            // runs of one seed in the simulator.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                in_flight.retain(|task| !task.is_finished());
                in_flight.push(spawn(serve_call(stream, peer, tls.clone(), svc.clone())));
            }
        }
    }
    drop(listener);
    for task in in_flight {
        let _ = task.await;
    }
    Ok(())
}

async fn serve_call<S, ResBody>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<SimIdentity>>,
    svc: S,
) where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let verified = match &tls {
        Some(identity) => match server_handshake(&mut reader, &mut writer, identity, peer).await {
            Some(verified) => Some(verified),
            None => return,
        },
        None => None,
    };
    let Ok(Ok(Some(Kind::Head(head)))) = timeout(HEAD_TIMEOUT, read_frame(&mut reader)).await
    else {
        return;
    };
    let Ok(headers) = wire_to_headers(&head.headers) else {
        return;
    };
    let limit = grpc_timeout::from_headers(&headers).unwrap_or(DEFAULT_CALL_TIMEOUT);
    let deadline = now() + limit;
    let body = body_from_reader(reader, deadline, peer, AbortOnDrop(None));
    let mut request = Request::new(body);
    *request.method_mut() = if head.method.is_empty() {
        Method::POST
    } else {
        match Method::from_bytes(head.method.as_bytes()) {
            Ok(method) => method,
            Err(_) => return,
        }
    };
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = headers;
    // As in production: a verified peer, or the bare address.
    if let Some(verified) = verified {
        request.extensions_mut().insert(verified);
    } else {
        request
            .extensions_mut()
            .insert(super::transport::PeerAddr(peer));
    }
    match head.path.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return,
    }

    let mut head_written = false;
    let outcome = timeout_at(deadline, async {
        let response = match svc.oneshot(request).await {
            Ok(response) => response,
            Err(e) => {
                let status = Status::internal(format!("server error: {}", e.into()));
                return write_trailers_only(&mut writer, &status).await;
            }
        };
        let (parts, body) = response.into_parts();
        let head = Head {
            status: u32::from(parts.status.as_u16()),
            headers: headers_to_wire(&parts.headers),
            ..Head::default()
        };
        write_frame(&mut writer, Kind::Head(head)).await?;
        head_written = true;
        pump_body(body, &mut writer).await
    })
    .await;
    if outcome.is_err() {
        let status = Status::deadline_exceeded(format!("server deadline of {limit:?} elapsed"));
        let _ = if head_written {
            let trailers = status_headers(&status);
            write_frame(
                &mut writer,
                Kind::Trailers(Head {
                    headers: trailers,
                    ..Head::default()
                }),
            )
            .await
        } else {
            write_trailers_only(&mut writer, &status).await
        };
    }
}

fn status_headers(status: &Status) -> Vec<WireHeader> {
    let mut headers = HeaderMap::new();
    // Only fails for a message that cannot be percent-encoded, which tonic never produces.
    let _ = status.add_header(&mut headers);
    headers_to_wire(&headers)
}

async fn write_trailers_only<W: AsyncWrite + Unpin>(w: &mut W, status: &Status) -> io::Result<()> {
    let mut headers = status_headers(status);
    headers.push(WireHeader {
        name: "content-type".into(),
        value: b"application/grpc".to_vec(),
    });
    write_frame(
        w,
        Kind::Head(Head {
            status: 200,
            headers,
            ..Head::default()
        }),
    )
    .await?;
    write_frame(w, Kind::End(true)).await
}
