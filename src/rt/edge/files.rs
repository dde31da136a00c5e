//! HTTP/1.1 for the media port, with file bodies sent by `sendfile(2)`:
//! the kernel copies from the page cache to the socket, and no byte passes
//! through user space (what makes nginx fast at the same job). hyper cannot
//! do this (its bodies are buffers it writes), so this is a small HTTP/1.1
//! server of its own for the requests a player makes: GET, HEAD and
//! OPTIONS (a CORS preflight), none with a body, kept alive and pipelined.
//!
//! The request goes to the same tower service as on any edge port (an axum
//! router); a response carrying a [`SendFile`] extension has its body sent
//! from that file with `sendfile`, any other body is written as it comes
//! (with its `Content-Length`, else chunked). The edge's accept loop, caps
//! and watchdog ([`super::Connection`]) run the connection as they run
//! hyper's: [`Activity`] sees the head's bytes arrive and the request in
//! flight, so the idle and header deadlines, and closing an idle connection
//! to make room, work the same.
//!
//! An idle connection holds no buffer: one is made once its next request's
//! first byte can be read, and freed once no byte of another is left. So
//! ten thousand idle players cost their sockets and tasks, not 10 000
//! buffers.
//!
//! `sendfile` reads the file as it sends: a page not in the page cache is
//! read from the disk on the runtime's thread (as nginx does without `aio
//! threads`). Media players read what was just written or read by others;
//! a cold disk is the case this does not optimise.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::body::Body;
use tower::{Service, ServiceExt as _};

use super::io::{Activity, EdgeIo, send_timed_out};
use crate::rt::transport::{PeerAddr, SendFile};
use crate::rt::{BoxError, timeout};

/// Largest request head (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// A request line longer than this makes a head too large a 414.
pub const MAX_LINE_BYTES: usize = 8 << 10;
/// Most header fields of a request.
pub const MAX_HEADERS: usize = 64;
/// What is read at once into a request head's buffer.
const READ_BYTES: usize = 4 << 10;
/// What is read (and dropped) of a refused request after the answer.
const DRAIN_BYTES: usize = 256 << 10;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Largest first piece of a body written in one buffer with the head.
const COALESCE_BYTES: usize = 16 << 10;
/// Most bytes one `sendfile` call is asked for (Linux sends at most about
/// 2 GiB a call anyway); the loop goes on until the range is sent.
const SENDFILE_MAX: usize = 1 << 30;

/// Why a request head was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: 431.
    TooLarge,
    /// Over [`MAX_HEAD_BYTES`] with a request line over [`MAX_LINE_BYTES`]
    /// (a query far past any the API takes): 414, as nginx answers.
    UriTooLong,
    /// Not HTTP/1.x, or not a head this server reads: 400 with the reason.
    Malformed(&'static str),
}

/// A request head read whole: the request, and whether the connection may
/// serve another after it.
struct Head {
    request: Request<Body>,
    keep_alive: bool,
}

/// What the bytes at the start of a connection's buffer are.
enum Parsed {
    /// A request this server takes, and the length of its head.
    Head(Box<Head>, usize),
    /// One for hyper: a request with a body, an upgrade, `Expect`, or the
    /// HTTP/2 preface. The connection is handed over, bytes read and all.
    HandOver,
}

/// The start of the HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// A connection this server hands to hyper: the socket, and the bytes read
/// from it that hyper must read first.
pub(super) struct HandOver {
    pub io: EdgeIo<TcpStream>,
    pub read: Vec<u8>,
}

/// Serves HTTP/1.1 requests on `io` with `svc` until the client closes, a
/// request asks to close, an error, or `stopping` turns true (the request
/// in flight is answered first), or a request for hyper comes: then the
/// connection is returned ([`HandOver`]) for hyper to serve from that
/// request on. `io` marks `activity` as the head's bytes arrive; each
/// request is in flight on it until its response is sent.
pub(super) async fn serve<S, B>(
    mut io: EdgeIo<TcpStream>,
    mut svc: S,
    peer: SocketAddr,
    activity: Arc<Activity>,
    send_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) -> io::Result<Option<HandOver>>
where
    S: Service<Request<Body>, Response = Response<B>> + Send,
    S::Future: Send,
    S::Error: Into<BoxError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() {
            // Between requests: no buffer, until there is a byte to read.
            buf = Vec::new();
            if *stopping.borrow_and_update() {
                return Ok(None);
            }
            tokio::select! {
                ready = io.get_ref().readable() => ready?,
                changed = stopping.changed() => if changed.is_err() || *stopping.borrow() {
                    return Ok(None);
                },
            }
        }
        let head = match read_head(&mut io, &mut buf).await {
            Ok(Some(Parsed::Head(head, _))) => *head,
            Ok(Some(Parsed::HandOver)) => return Ok(Some(HandOver { io, read: buf })),
            Ok(None) => return Ok(None),
            Err(bad) => {
                let _busy = activity.begin();
                return Box::pin(write_refusal(&mut io, bad)).await.map(|()| None);
            }
        };
        let busy = activity.begin();
        let method = head.request.method().clone();
        let mut request = head.request;
        request.extensions_mut().insert(PeerAddr(peer));
        // Boxed, as is the write below: the idle connection's task then
        // holds neither future, only what waits for the next byte.
        let response = match Box::pin(call(&mut svc, request)).await {
            Ok(response) => response.map(Body::new),
            Err(e) => {
                tracing::error!(%peer, error = %e, "the HTTP service failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        };
        let keep_alive = head.keep_alive && !*stopping.borrow();
        Box::pin(write_response(
            &mut io,
            response,
            &method,
            keep_alive,
            send_timeout,
        ))
        .await?;
        drop(busy);
        if !keep_alive {
            return io.shutdown().await.map(|()| None);
        }
    }
}

async fn call<S, B>(svc: &mut S, request: Request<Body>) -> Result<Response<B>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    svc.ready().await.map_err(Into::into)?;
    svc.call(request).await.map_err(Into::into)
}

/// Reads a request head into `buf` (which may hold bytes already: a
/// pipelined request), leaving after it what follows (all of it, the head
/// too, for [`Parsed::HandOver`]). `Ok(None)`: the client closed before a
/// byte of another request.
async fn read_head(io: &mut EdgeIo<TcpStream>, buf: &mut Vec<u8>) -> Result<Option<Parsed>, Bad> {
    loop {
        if !buf.is_empty() {
            match parse(buf)? {
                Some(Parsed::Head(head, used)) => {
                    buf.drain(..used);
                    return Ok(Some(Parsed::Head(head, used)));
                }
                Some(Parsed::HandOver) => return Ok(Some(Parsed::HandOver)),
                None => {}
            }
            if buf.len() >= MAX_HEAD_BYTES {
                let line = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
                return Err(if line > MAX_LINE_BYTES {
                    Bad::UriTooLong
                } else {
                    Bad::TooLarge
                });
            }
        }
        buf.reserve(READ_BYTES.min(MAX_HEAD_BYTES + 1 - buf.len()));
        match io.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(Bad::Malformed(
                    "the connection closed inside a request head",
                ));
            }
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// The head at the start of `buf` and its length, `None` if it is not
/// whole yet.
fn parse(buf: &[u8]) -> Result<Option<Parsed>, Bad> {
    if buf.starts_with(H2_PREFACE) {
        return Ok(Some(Parsed::HandOver));
    }
    if H2_PREFACE.starts_with(buf) {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Bad::TooLarge),
        Err(_) => return Err(Bad::Malformed("not an HTTP/1.1 request head")),
    };
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(Bad::Malformed("bad method"))?;
    let path = req.path.unwrap_or_default();
    if !path.starts_with('/') {
        return Err(Bad::Malformed("the request target must be a path"));
    }
    let uri = Uri::try_from(path).map_err(|_| Bad::Malformed("bad request target"))?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Bad::Malformed("bad header name"))?;
        let value =
            HeaderValue::from_bytes(field.value).map_err(|_| Bad::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let length = match lengths.next() {
        None => 0,
        Some(v) => content_length(v.as_bytes())?,
    };
    if lengths.any(|v| content_length(v.as_bytes()) != Ok(length)) {
        return Err(Bad::Malformed("conflicting Content-Length fields"));
    }
    if length > 0
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::UPGRADE)
        || headers.contains_key(header::EXPECT)
    {
        return Ok(Some(Parsed::HandOver));
    }
    let close = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "close"));
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => {
            !close
                && headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .any(|v| has_token(v, "keep-alive"))
        }
    };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Parsed::Head(
        Box::new(Head {
            request,
            keep_alive,
        }),
        used,
    )))
}

/// A Content-Length value: decimal digits only (RFC 9110 8.6).
fn content_length(value: &[u8]) -> Result<u64, Bad> {
    const BAD: Bad = Bad::Malformed("bad Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(BAD)
}

/// Whether a comma-separated header value has `token` (ASCII case aside).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers a head that was not taken, with a JSON body, and closes.
async fn write_refusal(io: &mut EdgeIo<TcpStream>, bad: Bad) -> io::Result<()> {
    let response = match bad {
        Bad::TooLarge => json_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ),
        Bad::UriTooLong => json_error(StatusCode::URI_TOO_LONG, "request target too long"),
        Bad::Malformed(why) => json_error(StatusCode::BAD_REQUEST, why),
    };
    write_response(io, response, &Method::GET, false, Duration::MAX).await?;
    io.shutdown().await?;
    // Closing a socket with unread bytes resets the connection, and the
    // reset can destroy the answer before the client reads it: read what
    // the client still sends (bounded in bytes and time) first.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let _ = timeout(DRAIN_TIME, async {
        while drained < DRAIN_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

/// The response head: status line, the response's fields (less those of
/// the connection, which are ours), `date`, the body's framing.
fn head_bytes(status: StatusCode, headers: &HeaderMap, framing: &str, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(crate::rt::http_date_now().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(framing.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether a response of `status` to `method` has no body (RFC 9110 6.4.1).
fn bodiless(status: StatusCode, method: &Method) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Writes `response`: its file range by `sendfile` when it carries a
/// [`SendFile`], else its body. An error leaves the connection unusable.
async fn write_response(
    io: &mut EdgeIo<TcpStream>,
    response: Response<Body>,
    method: &Method,
    keep_alive: bool,
    send_timeout: Duration,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let length = declared.or_else(|| body.size_hint().exact());
    let framing = match (parts.status, length) {
        (s, _) if s == StatusCode::NO_CONTENT || s.is_informational() => String::new(),
        (s, None) if s == StatusCode::NOT_MODIFIED => String::new(),
        (_, Some(n)) => format!("content-length: {n}\r\n"),
        (_, None) if method == Method::HEAD => String::new(),
        (_, None) => "transfer-encoding: chunked\r\n".to_owned(),
    };
    let head = head_bytes(parts.status, &parts.headers, &framing, keep_alive);
    if bodiless(parts.status, method) {
        return write_all(io, &head).await;
    }
    if let Some(file) = parts.extensions.get::<SendFile>() {
        if length != Some(file.end.saturating_sub(file.from)) {
            return Err(io::Error::other(
                "a file response's length is not its range's",
            ));
        }
        // The head goes with the first bytes of the file (MSG_MORE), not
        // in a packet of its own.
        send_more(io.get_ref(), &head, send_timeout).await?;
        return send_file(io.get_ref(), file, send_timeout).await;
    }
    let chunked = length.is_none();
    // The head goes in one write with the body's first bytes when they are
    // ready at once and few (a JSON answer: one packet, not two); a body
    // whose first bytes are not ready yet (a stream of events) gets its
    // head now, so the client sees the answer begin.
    let mut next = body.frame().now_or_never();
    let mut pending = Some(head);
    if next.is_none()
        && let Some(head) = pending.take()
    {
        write_all(io, &head).await?;
    }
    let mut sent: u64 = 0;
    loop {
        let frame = match next.take() {
            Some(ready) => ready,
            None => body.frame().await,
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if !chunked && length.is_some_and(|n| sent > n) {
            return Err(io::Error::other("a body longer than its Content-Length"));
        }
        let mut out = pending.take().unwrap_or_default();
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.is_empty() || data.len() > COALESCE_BYTES {
            if !out.is_empty() {
                write_all(io, &out).await?;
            }
            write_all(io, &data).await?;
            if chunked {
                write_all(io, b"\r\n").await?;
            }
        } else {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            write_all(io, &out).await?;
        }
    }
    if let Some(head) = pending {
        write_all(io, &head).await?;
    }
    if chunked {
        write_all(io, b"0\r\n\r\n").await?;
    } else if length != Some(sent) {
        return Err(io::Error::other("a body shorter than its Content-Length"));
    }
    Ok(())
}

async fn write_all(io: &mut EdgeIo<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await
}

/// Runs the non-blocking socket operation `op` until it returns
/// something, waiting for the socket to take bytes at most `send_timeout`
/// each time.
async fn when_writable<R>(
    stream: &TcpStream,
    send_timeout: Duration,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        match stream.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match timeout(send_timeout, stream.writable()).await {
                    Ok(ready) => ready?,
                    Err(_) => return Err(send_timed_out(send_timeout)),
                }
            }
            done => return done,
        }
    }
}

/// Writes `bytes` whole, telling the kernel more follows (`MSG_MORE`).
async fn send_more(stream: &TcpStream, bytes: &[u8], send_timeout: Duration) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        at += when_writable(stream, send_timeout, || {
            rustix::net::send(stream.as_fd(), &bytes[at..], rustix::net::SendFlags::MORE)
                .map_err(io::Error::from)
        })
        .await?;
    }
    Ok(())
}

/// Sends the file range `file` with `sendfile(2)`.
async fn send_file(stream: &TcpStream, file: &SendFile, send_timeout: Duration) -> io::Result<()> {
    let mut offset = file.from;
    while offset < file.end {
        let count = usize::try_from(file.end - offset)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_MAX);
        let sent = when_writable(stream, send_timeout, || {
            rustix::fs::sendfile(stream.as_fd(), file.file.as_fd(), Some(&mut offset), count)
                .map_err(io::Error::from)
        })
        .await?;
        if sent == 0 {
            // Shorter than its size: changed underneath (blobs never are).
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ended before its range",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::transport::EdgeLimits;
    use futures::StreamExt as _;
    use std::io::Write as _;

    /// A media port (or, `hyper`, an ordinary edge port) whose `/file`
    /// answers with a [`SendFile`] of `file` but a body of other bytes,
    /// so that what arrives tells which was sent; `/json` a plain body of
    /// unknown length; `/big` a body longer than its Content-Length.
    async fn server(file: std::fs::File, protocol: super::super::Protocol) -> SocketAddr {
        let file = Arc::new(file);
        let size = file.metadata().expect("meta").len();
        let router = axum::Router::new()
            .route(
                "/file",
                axum::routing::get(move |headers: HeaderMap| {
                    let file = file.clone();
                    async move {
                        let from: u64 = headers
                            .get("x-from")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(0);
                        let mut res =
                            Response::new(axum::body::Body::from(vec![
                                b'b';
                                usize::try_from(size - from)
                                    .expect("small")
                            ]));
                        res.headers_mut()
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(size - from));
                        res.extensions_mut().insert(SendFile {
                            file,
                            from,
                            end: size,
                        });
                        res
                    }
                }),
            )
            .route(
                "/events",
                axum::routing::get(|| async {
                    // Its first bytes come when the test sends them.
                    let rx = EVENTS.lock().expect("events").take().expect("one stream");
                    axum::body::Body::from_stream(
                        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                            .map(Ok::<_, io::Error>),
                    )
                }),
            )
            .route(
                "/echo",
                axum::routing::post(|body: Bytes| async move { body }),
            )
            .route(
                "/json",
                axum::routing::get(|| async {
                    axum::body::Body::from_stream(futures::stream::iter([
                        Ok::<_, io::Error>(Bytes::from_static(b"{\"a\":")),
                        Ok(Bytes::from_static(b"1}")),
                    ]))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let svc = router
            .into_service::<Body>()
            .map_response(|r: Response<axum::body::Body>| r.map(Body::new));
        crate::rt::spawn(super::super::serve(
            listener,
            svc,
            EdgeLimits::default(),
            None,
            protocol,
            std::future::pending(),
        ));
        addr
    }

    fn scratch_file(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        f
    }

    /// Sends `request` and reads until the server closes or `responses`
    /// whole responses are in (counted by their heads; bodies are small).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The head `text` starts with, if whole (a request for hyper fails
    /// the test).
    fn parsed(text: &str) -> Result<Option<(Head, usize)>, Bad> {
        Ok(match parse(text.as_bytes())? {
            Some(Parsed::Head(head, used)) => Some((*head, used)),
            Some(Parsed::HandOver) => panic!("handed over: {text:?}"),
            None => None,
        })
    }

    fn handed_over(text: &str) -> bool {
        matches!(parse(text.as_bytes()), Ok(Some(Parsed::HandOver)))
    }

    #[test]
    fn requests_with_a_body_upgrades_and_http2_go_to_hyper() {
        for request in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "PRI * HTTP/2.0\r\n",
        ] {
            assert!(handed_over(request), "{request:?}");
        }
        // Not yet known: the start of the HTTP/2 preface.
        assert!(matches!(parse(b"PRI * HT"), Ok(None)));
    }

    #[test]
    fn heads_are_read_with_their_connection_rules() {
        let first = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\n\r\n";
        let (head, used) = parsed(&format!("{first}GET")).expect("ok").expect("whole");
        assert_eq!(used, first.len());
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers()[header::RANGE], "bytes=0-1");
        assert!(head.keep_alive);
        let close = parsed("HEAD / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .expect("ok")
            .expect("whole");
        assert!(!close.0.keep_alive);
        assert_eq!(close.0.request.method(), Method::HEAD);
        let old = parsed("GET / HTTP/1.0\r\n\r\n")
            .expect("ok")
            .expect("whole");
        assert!(!old.0.keep_alive, "HTTP/1.0 closes unless asked not to");
        let kept = parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("ok")
            .expect("whole");
        assert!(kept.0.keep_alive);
        assert!(
            parsed("GET / HTTP/1.1\r\nHost: x\r\n")
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        for bad in [
            "GET a HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 12a\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ] {
            assert!(matches!(parsed(bad), Err(Bad::Malformed(_))), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(matches!(
            parsed(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(Bad::TooLarge)
        ));
        // An empty body is no body.
        assert!(parsed("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_ok());
    }

    #[test]
    fn response_heads_carry_our_framing_not_the_handlers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let text = String::from_utf8(head_bytes(
            StatusCode::PARTIAL_CONTENT,
            &h,
            "content-length: 10\r\n",
            false,
        ))
        .expect("utf-8");
        assert!(
            text.starts_with("HTTP/1.1 206 Partial Content\r\n"),
            "{text}"
        );
        assert!(text.contains("content-type: video/mp2t\r\n"));
        assert!(text.contains("content-length: 10\r\n") && !text.contains("99"));
        assert!(text.contains("connection: close\r\n") && !text.contains("upgrade"));
        assert!(text.contains("\r\ndate: ") && text.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn file_responses_go_by_sendfile_on_the_media_port_only() {
        let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let media = server(scratch_file(&data), super::super::Protocol::Files).await;
        let hyper = server(scratch_file(&data), super::super::Protocol::Hyper).await;
        let ask = b"GET /file HTTP/1.1\r\nhost: x\r\nx-from: 1000\r\nconnection: close\r\n\r\n";
        let by_file = exchange(media, ask).await;
        let (head, body) = by_file.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("content-length: 299000"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(
            body.as_bytes(),
            &data[1000..],
            "the file's bytes, not the body's"
        );
        let by_body = exchange(hyper, ask).await;
        let (_, body) = by_body.split_once("\r\n\r\n").expect("a head");
        assert!(body.bytes().all(|b| b == b'b') && body.len() == 299_000);
    }

    #[tokio::test]
    async fn requests_are_kept_alive_pipelined_and_bad_ones_answered_in_json() {
        let media = server(scratch_file(b"0123456789"), super::super::Protocol::Files).await;
        // Three pipelined requests on one connection: the file, a HEAD of
        // it, a body of unknown length (chunked); the last closes.
        let text = exchange(
            media,
            b"GET /file HTTP/1.1\r\n\r\nHEAD /file HTTP/1.1\r\n\r\n\
              GET /json HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        assert!(text.contains("\r\n\r\n0123456789HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"),
            "{text}"
        );
        let missing = exchange(media, b"GET /nope HTTP/1.1\r\nconnection: close\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        for (request, status) in [
            (&b"GET nope HTTP/1.1\r\n\r\n"[..], "400"),
            (
                b"POST /echo HTTP/1.1\r\ncontent-length: 3a\r\n\r\nabc",
                "400",
            ),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "400"),
        ] {
            let text = exchange(media, request).await;
            assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
            assert!(text.contains("content-type: application/json"), "{text}");
            assert!(
                text.ends_with('}') && text.contains("{\"error\":"),
                "{text}"
            );
        }
        let huge = format!(
            "GET / HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let text = exchange(media, huge.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("request head too large"), "{text}");
        let long = format!("GET /?q={} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        let text = exchange(media, long.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 414"), "{text}");
        assert!(text.contains("request target too long"), "{text}");
    }

    /// Where `/events` takes its body from.
    static EVENTS: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>> =
        std::sync::Mutex::new(None);

    /// A body whose first bytes are not ready (a stream of events) gets
    /// its head at once; its bytes follow as they come.
    #[tokio::test]
    async fn the_head_of_a_slow_body_goes_first() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *EVENTS.lock().expect("events") = Some(rx);
        let port = server(scratch_file(b"x"), super::super::Protocol::Files).await;
        let mut stream = TcpStream::connect(port).await.expect("connect");
        stream
            .write_all(b"GET /events HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("the head, before any of the body")
                .expect("read");
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        tx.send(Bytes::from_static(b"event")).expect("send");
        let n = timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the event")
            .expect("read");
        assert_eq!(&buf[..n], b"5\r\nevent\r\n");
    }

    /// A request with a body hands the connection to hyper, bytes already
    /// read and all: what was pipelined after it is answered too, in order.
    #[tokio::test]
    async fn a_request_with_a_body_is_served_by_hyper_from_there_on() {
        let port = server(scratch_file(b"0123456789"), super::super::Protocol::Files).await;
        let text = exchange(
            port,
            b"GET /file HTTP/1.1\r\n\r\n\
              POST /echo HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
              GET /file HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
        let first = text.find("0123456789").expect("the file, sent");
        let echoed = text.find("\r\n\r\nhello").expect("the body, echoed");
        let hyper_body = text.rfind("bbbbbbbbbb").expect("the body hyper writes");
        assert!(first < echoed && echoed < hyper_body, "{text}");
    }
}
