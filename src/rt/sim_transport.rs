//! The gRPC transport under madsim: tonic-generated clients and servers, the
//! same tower layers, and prost-encoded HTTP bodies carried over madsim's
//! simulated TCP (one connection per call, length-prefixed frames).
//!
//! A call is `Head, Data*, (Trailers | End)` in each direction, so unary and
//! streaming calls (client, server, bidirectional) all work. Every call has a
//! deadline (`grpc-timeout`, else [`DEFAULT_CALL_TIMEOUT`]) on both sides,
//! because a clogged peer is silent. Transport failures surface as
//! UNAVAILABLE, as with tonic's real transport.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
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

#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4")]
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
            Ok(Ok(Some(Kind::Head(_)))) => {
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
}

impl SimChannel {
    /// A channel to `addr`; each call opens its own connection.
    #[must_use]
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }
}

impl Service<Request<Body>> for SimChannel {
    type Response = Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<Body>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(call(self.addr, req))
    }
}

async fn call(addr: SocketAddr, req: Request<Body>) -> Result<Response<Body>, Status> {
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
/// by its deadline).
pub async fn serve<S, ResBody>(
    listener: TcpListener,
    svc: S,
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
                in_flight.push(spawn(serve_call(stream, peer, svc.clone())));
            }
        }
    }
    drop(listener);
    for task in in_flight {
        let _ = task.await;
    }
    Ok(())
}

async fn serve_call<S, ResBody>(stream: TcpStream, peer: SocketAddr, svc: S)
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError> + Send,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
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
    request
        .extensions_mut()
        .insert(super::transport::PeerAddr(peer));
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
