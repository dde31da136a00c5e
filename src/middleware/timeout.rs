//! Deadlines: the server layer takes the caller's `grpc-timeout` (bounded by
//! a default and a maximum), answers DEADLINE_EXCEEDED when it passes, and
//! makes the deadline current for the handler; the client layer propagates
//! the current deadline to downstream calls, so a chain of calls never
//! outlives its first caller.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::grpc_timeout;
use crate::rt::{self, Instant};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being handled on this task, if any.
#[must_use]
pub fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

fn deadline_response<B: Default>(message: &str) -> Response<B> {
    let (parts, ()) = tonic::Status::deadline_exceeded(message)
        .into_http::<()>()
        .into_parts();
    Response::from_parts(parts, B::default())
}

/// Server side: enforces the call's deadline.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    default: Duration,
    max: Duration,
    /// One method (by path) with a ceiling of its own.
    long: Option<(&'static str, Duration)>,
}

impl TimeoutLayer {
    /// Calls without `grpc-timeout` get `default`; none gets more than `max`.
    #[must_use]
    pub fn new(default: Duration, max: Duration) -> Self {
        Self {
            default,
            max,
            long: None,
        }
    }

    /// Calls to `path` (e.g. a long client stream) may ask for up to `max`.
    #[must_use]
    pub fn with_max_for(self, path: &'static str, max: Duration) -> Self {
        Self {
            long: Some((path, max)),
            ..self
        }
    }

    fn max_for(&self, path: &str) -> Duration {
        match self.long {
            Some((p, max)) if p == path => max,
            _ => self.max,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            layer: *self,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S, B, ResBody> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = grpc_timeout::from_headers(req.headers())
            .unwrap_or(self.layer.default)
            .min(self.layer.max_for(req.uri().path()));
        let deadline = rt::now() + limit;
        ResponseFuture {
            inner: rt::timeout_at(deadline, DEADLINE.scope(deadline, self.inner.call(req))),
            limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The deadline-bounded call (not boxed: this runs on every call).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: rt::TimeoutAt<tokio::task::futures::TaskLocalFuture<Instant, F>>,
        limit: Duration,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match std::task::ready!(this.inner.poll(cx)) {
            Ok(result) => result,
            Err(rt::Elapsed) => Ok(deadline_response(&format!(
                "server deadline of {:?} elapsed",
                this.limit
            ))),
        })
    }
}

/// Client side: caps each outgoing call's `grpc-timeout` at what is left of
/// the current deadline; fails at once when nothing is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateDeadlineLayer;

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateDeadline { inner }
    }
}

/// See [`PropagateDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct PropagateDeadline<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for PropagateDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    /// The inner call's own future (not boxed again), or the refusal.
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures::future::Either;
        // buggify (simulation only): a call now and then gets a deadline far
        // too short for it, so that every caller meets DEADLINE_EXCEEDED
        // (on either side of the wire) on paths that normally succeed.
        if rt::faults::buggify(rt::faults::Point::ShortDeadline, 0.01) {
            let short = Duration::from_millis(rt::faults::buggify_range(1, 200));
            req.headers_mut()
                .insert(grpc_timeout::NAME, grpc_timeout::encode(short));
        }
        if let Some(deadline) = current_deadline() {
            let left = deadline.saturating_duration_since(rt::now());
            if left.is_zero() {
                return Either::Right(std::future::ready(Ok(deadline_response(
                    "the caller's deadline has passed",
                ))));
            }
            let own = grpc_timeout::from_headers(req.headers());
            if own.is_none_or(|own| own > left) {
                req.headers_mut()
                    .insert(grpc_timeout::NAME, grpc_timeout::encode(left));
            }
        }
        Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// Sleeps as long as the `sleep-ms` header says, then answers with the
    /// `grpc-timeout` a downstream call would carry.
    fn sleeper()
    -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|req: Request<()>| async move {
            let ms: u64 = req
                .headers()
                .get("sleep-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            rt::sleep(Duration::from_millis(ms)).await;
            let downstream = tower::service_fn(|r: Request<()>| async move {
                let t = r
                    .headers()
                    .get(grpc_timeout::HEADER)
                    .map(|v| v.to_str().unwrap().to_owned());
                Ok::<_, Infallible>(Response::new(t.unwrap_or_default()))
            });
            let res = PropagateDeadlineLayer
                .layer(downstream)
                .oneshot(Request::new(()))
                .await?;
            Ok::<_, Infallible>(res)
        })
    }

    fn request(timeout: Option<&str>, sleep_ms: u64) -> Request<()> {
        let mut b = Request::builder().header("sleep-ms", sleep_ms.to_string());
        if let Some(t) = timeout {
            b = b.header(grpc_timeout::HEADER, t);
        }
        b.body(()).unwrap()
    }

    fn code(res: &Response<String>) -> Option<tonic::Code> {
        tonic::Status::from_header_map(res.headers()).map(|s| s.code())
    }

    #[tokio::test(start_paused = true)]
    async fn enforces_and_propagates_deadlines() {
        let layer = TimeoutLayer::new(Duration::from_secs(10), Duration::from_secs(60));
        let started = rt::now();
        let res = layer
            .layer(sleeper())
            .oneshot(request(Some("500m"), 2_000))
            .await
            .unwrap();
        assert_eq!(code(&res), Some(tonic::Code::DeadlineExceeded));
        assert_eq!(
            rt::now() - started,
            Duration::from_millis(500),
            "answered at the deadline"
        );

        let res = layer
            .layer(sleeper())
            .oneshot(request(Some("1S"), 300))
            .await
            .unwrap();
        assert_eq!(code(&res), None);
        let downstream =
            grpc_timeout::parse(res.body().as_bytes()).expect("downstream carries a timeout");
        assert!(
            downstream <= Duration::from_millis(700) && downstream >= Duration::from_millis(690),
            "{downstream:?}"
        );

        let res = layer
            .layer(sleeper())
            .oneshot(request(None, 0))
            .await
            .unwrap();
        assert_eq!(
            grpc_timeout::parse(res.body().as_bytes()),
            Some(Duration::from_secs(10)),
            "the default applies"
        );
        let res = layer
            .layer(sleeper())
            .oneshot(request(Some("2H"), 0))
            .await
            .unwrap();
        assert_eq!(
            grpc_timeout::parse(res.body().as_bytes()),
            Some(Duration::from_secs(60)),
            "capped at the maximum"
        );

        // One method may have a longer ceiling; the others keep theirs.
        let long = layer.with_max_for("/pkg.Svc/Long", Duration::from_secs(3 * 3600));
        let to = |path: &str| {
            let mut req = request(Some("2H"), 0);
            *req.uri_mut() = path.parse().unwrap();
            long.layer(sleeper()).oneshot(req)
        };
        let res = to("/pkg.Svc/Long").await.unwrap();
        assert_eq!(
            grpc_timeout::parse(res.body().as_bytes()),
            Some(Duration::from_secs(2 * 3600))
        );
        let res = to("/pkg.Svc/Other").await.unwrap();
        assert_eq!(
            grpc_timeout::parse(res.body().as_bytes()),
            Some(Duration::from_secs(60))
        );
    }
}
