//! A connection's socket as the edge server sees it: a write the client
//! does not take within the send timeout fails (nginx's `send_timeout`),
//! and every byte read tells the connection's [`Activity`] that a request
//! head is on its way.
//!
//! Also [`Activity`] itself: whether the connection is idle, reading a
//! request head or serving requests, and since when, which the connection's
//! watchdog turns into the idle and header deadlines.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rt::{self, Instant};

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of the next one, since then.
    Idle(Instant),
    /// The first byte of a request head came then; no request yet.
    Head(Instant),
    /// This many requests in flight (their responses not yet sent).
    Busy(usize),
}

/// What a connection is doing, shared by its socket, its requests and its
/// watchdog.
#[derive(Debug)]
pub struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    /// A connection opened `now`: idle until its first byte.
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Mutex::new(Phase::Idle(now)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes were read: an idle connection starts on a request head.
    fn read(&self) {
        let mut phase = self.lock();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(rt::now());
        }
    }

    /// A request's head has arrived; until the guard is dropped (its
    /// response sent, or abandoned) the connection is busy.
    #[must_use]
    pub fn begin(self: &Arc<Self>) -> Busy {
        let mut phase = self.lock();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Head(_) => Phase::Busy(1),
        };
        Busy(self.clone())
    }

    /// Since when the connection has been idle (no request in flight and no
    /// byte of the next), if it is.
    #[must_use]
    pub fn idle_since(&self) -> Option<Instant> {
        match *self.lock() {
            Phase::Idle(since) => Some(since),
            Phase::Head(_) | Phase::Busy(_) => None,
        }
    }

    /// When the connection is to be closed if nothing happens meanwhile:
    /// `idle` after its last response (or its opening), `head` after the
    /// first byte of a request head that has not arrived whole; never while
    /// a request is in flight.
    #[must_use]
    pub fn expires(&self, idle: Duration, head: Duration) -> Option<Instant> {
        match *self.lock() {
            Phase::Idle(since) => Some(since + idle),
            Phase::Head(since) => Some(since + head),
            Phase::Busy(_) => None,
        }
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = self.0.lock();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(rt::now()),
        };
    }
}

pin_project_lite::pin_project! {
    /// A socket whose writes fail once one has waited `send_timeout` for
    /// the client to take bytes, and whose reads mark [`Activity`].
    #[derive(Debug)]
    pub struct EdgeIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        send_timeout: Duration,
        // Made at the first write that waits, then reset: no allocation
        // while writes go through at once.
        stall: Option<Pin<Box<tokio::time::Sleep>>>,
        // Whether `stall` times the write waiting now.
        armed: bool,
    }
}

impl<T> EdgeIo<T> {
    /// `inner` with a send timeout, reporting reads to `activity`.
    pub fn new(inner: T, activity: Arc<Activity>, send_timeout: Duration) -> Self {
        Self {
            inner,
            activity,
            send_timeout,
            stall: None,
            armed: false,
        }
    }

    /// The socket itself.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// The error a write gets once it has waited the send timeout.
pub(super) fn send_timed_out(after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "send timeout: the client took no bytes for {} ms",
            after.as_millis()
        ),
    )
}

impl<T: AsyncWrite> EdgeIo<T> {
    /// Runs one write-side poll of the socket under the send timeout.
    fn timed<R>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let this = self.project();
        if let Poll::Ready(result) = op(this.inner, cx) {
            *this.armed = false;
            return Poll::Ready(result);
        }
        let timeout = *this.send_timeout;
        if !*this.armed {
            let deadline = tokio::time::Instant::now() + timeout;
            match this.stall.as_mut() {
                Some(stall) => stall.as_mut().reset(deadline),
                None => *this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            *this.armed = true;
        }
        let stall = this
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stall.as_mut().poll(cx));
        *this.armed = false;
        Poll::Ready(Err(send_timed_out(timeout)))
    }
}

impl<T: AsyncRead> AsyncRead for EdgeIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = ready!(this.inner.poll_read(cx, buf));
        if buf.filled().len() > before {
            this.activity.read();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.timed(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, AsyncWrite::poll_flush)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timed(cx, AsyncWrite::poll_shutdown)
    }
}

pin_project_lite::pin_project! {
    /// A connection whose first bytes were read already (by the media
    /// server, which then handed the connection to hyper): reads give
    /// those first, then the socket's.
    #[derive(Debug)]
    pub struct Prefixed<T> {
        prefix: Vec<u8>,
        at: usize,
        #[pin]
        inner: T,
    }
}

impl<T> Prefixed<T> {
    /// `inner`, whose reads start with `prefix`.
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - *this.at);
            buf.put_slice(&this.prefix[*this.at..*this.at + n]);
            *this.at += n;
            if *this.at == this.prefix.len() {
                *this.prefix = Vec::new();
                *this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_prefixed_connection_reads_its_prefix_first() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Prefixed::new(b"abc".to_vec(), server);
        client.write_all(b"def").await.expect("write");
        let mut got = [0u8; 2];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ab");
        let mut rest = [0u8; 4];
        io.read_exact(&mut rest).await.expect("read");
        assert_eq!(&rest, b"cdef");
        io.write_all(b"out").await.expect("write");
        let mut out = [0u8; 3];
        client.read_exact(&mut out).await.expect("read");
        assert_eq!(&out, b"out");
    }

    const SEND_TIMEOUT: Duration = Duration::from_secs(30);

    fn edge(capacity: usize) -> (EdgeIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::new(rt::now()));
        (EdgeIo::new(server, activity, SEND_TIMEOUT), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_does_not_take_fails_after_the_send_timeout() {
        let (mut io, _client) = edge(1024);
        let started = rt::now();
        let err = io.write_all(&[7u8; 4096]).await.expect_err("nobody reads");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(rt::now() - started, SEND_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_is_not_cut() {
        let (mut io, mut client) = edge(1024);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut got = 0;
            while got < 64 << 10 {
                // Each read comes within the send timeout of the last.
                tokio::time::sleep(SEND_TIMEOUT - Duration::from_secs(1)).await;
                got += client.read(&mut buf).await.expect("read");
            }
            got
        });
        io.write_all(&[1u8; 64 << 10])
            .await
            .expect("every write made progress in time");
        assert_eq!(reader.await.expect("reader"), 64 << 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_counts_from_when_the_write_began_to_wait() {
        let (mut io, mut client) = edge(16);
        io.write_all(&[1u8; 16]).await.expect("fits");
        // Long after, a write waits; the client takes nothing more.
        tokio::time::sleep(SEND_TIMEOUT * 3).await;
        let started = rt::now();
        let mut buf = [0u8; 16];
        client.read_exact(&mut buf).await.expect("the first bytes");
        io.write_all(&[2u8; 16]).await.expect("room again");
        let err = io.write_all(&[3u8; 1]).await.expect_err("full");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(rt::now() - started, SEND_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_follows_reads_and_requests() {
        let (server, mut client) = tokio::io::duplex(64);
        let opened = rt::now();
        let activity = Arc::new(Activity::new(opened));
        let mut io = EdgeIo::new(server, activity.clone(), SEND_TIMEOUT);
        let (idle, head) = (Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(activity.expires(idle, head), Some(opened + idle));

        tokio::time::sleep(Duration::from_secs(5)).await;
        client.write_all(b"GET / HT").await.expect("write");
        let mut buf = [0u8; 8];
        io.read_exact(&mut buf).await.expect("read");
        let first_byte = rt::now();
        assert_eq!(activity.expires(idle, head), Some(first_byte + head));

        let one = activity.begin();
        let two = activity.begin();
        assert_eq!(activity.expires(idle, head), None, "busy: no deadline");
        drop(one);
        assert_eq!(activity.expires(idle, head), None, "one still in flight");
        tokio::time::sleep(Duration::from_secs(7)).await;
        drop(two);
        let done = rt::now();
        assert_eq!(activity.expires(idle, head), Some(done + idle));
    }
}
