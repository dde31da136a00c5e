//! Per-caller rate limit: a token bucket per calling service (the verified
//! [`Caller`] of the auth layer, else `anonymous`). A refused call gets
//! RESOURCE_EXHAUSTED at once, with `retry-after-ms` saying when to retry.

use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::Either;
use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::auth::{Caller, EXEMPT_PREFIXES};
use crate::resilience::rate::TokenBucket;
use crate::rt;

/// The header naming how long to wait, in milliseconds.
pub const RETRY_AFTER_HEADER: &str = "retry-after-ms";
/// Distinct callers tracked; more share one overflow bucket.
pub const MAX_CALLERS: usize = 1024;
const OVERFLOW: &str = "~overflow";

/// Limits each calling service to `burst` calls at once and `per_sec` on average.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    burst: u32,
    per_sec: f64,
    /// At most [`MAX_CALLERS`] keys (verified callers), so the fixed-seed
    /// hasher is safe.
    buckets: Arc<Mutex<crate::FixedHashMap<String, TokenBucket>>>,
}

impl RateLimitLayer {
    /// A limit shared by every service this layer wraps.
    #[must_use]
    pub fn new(burst: u32, per_sec: f64) -> Self {
        Self {
            burst,
            per_sec,
            buckets: Arc::default(),
        }
    }

    /// Takes a token for `caller`, or returns the wait.
    fn admit(&self, caller: &str) -> Result<(), std::time::Duration> {
        let now = rt::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bucket) = buckets.get_mut(caller) {
            return bucket.try_take(now);
        }
        let key = if buckets.len() < MAX_CALLERS {
            caller
        } else {
            OVERFLOW
        };
        buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(self.burst, self.per_sec, now))
            .try_take(now)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if EXEMPT_PREFIXES
            .iter()
            .any(|p| req.uri().path().starts_with(p))
        {
            return Either::Left(self.inner.call(req));
        }
        let caller = req
            .extensions()
            .get::<Caller>()
            .map_or("anonymous", |c| &*c.0);
        match self.layer.admit(caller) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(wait) => {
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                let status = tonic::Status::resource_exhausted(format!(
                    "rate limit of {caller} exceeded; retry after {ms} ms"
                ));
                let (mut parts, ()) = status.into_http::<()>().into_parts();
                parts
                    .headers
                    .insert(RETRY_AFTER_HEADER, HeaderValue::from(ms));
                Either::Right(ready(Ok(Response::from_parts(parts, ResBody::default()))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    fn ok() -> impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone {
        tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
    }

    async fn call(layer: &RateLimitLayer, caller: Option<&str>) -> Response<()> {
        let mut req = Request::builder()
            .uri("/streamgate.v1.CacheService/Get")
            .body(())
            .unwrap();
        if let Some(c) = caller {
            req.extensions_mut().insert(Caller(c.into()));
        }
        layer.layer(ok()).oneshot(req).await.unwrap()
    }

    fn refused(res: &Response<()>) -> bool {
        tonic::Status::from_header_map(res.headers())
            .is_some_and(|s| s.code() == tonic::Code::ResourceExhausted)
    }

    #[tokio::test(start_paused = true)]
    async fn limits_each_caller_separately_and_says_when_to_retry() {
        let layer = RateLimitLayer::new(3, 10.0);
        for _ in 0..3 {
            assert!(!refused(&call(&layer, Some("upload")).await));
        }
        let res = call(&layer, Some("upload")).await;
        assert!(
            refused(&res),
            "the fourth call in a burst of three is refused"
        );
        let wait: u64 = res.headers()[RETRY_AFTER_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=100).contains(&wait), "{wait} ms");
        assert!(
            !refused(&call(&layer, Some("metadata")).await),
            "another caller has its own bucket"
        );
        rt::sleep(Duration::from_millis(wait)).await;
        assert!(
            !refused(&call(&layer, Some("upload")).await),
            "admitted after the advertised wait"
        );
    }
}
