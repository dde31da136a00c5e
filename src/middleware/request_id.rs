//! `x-request-id`: keeps a well-formed incoming id, else takes the call's
//! trace id (so one id names a request across every hop without a header of
//! its own), else generates one; makes it visible to the handler (request
//! extension and [`rt::trace::request_id`] while it runs, so an internal
//! error can name it) and echoes it on the response. Placed inside the
//! server's trace layer, which puts the call's context ([`Served`]) in the
//! request's extensions.
//! The same layer on a client stamps outgoing calls that carry none (the
//! pool doesn't use it: its calls carry `traceparent`, from which the server
//! derives the id).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use super::trace::Served;
use crate::rt;

/// The header's name.
pub const HEADER: &str = "x-request-id";
/// The same, made once: a lookup by `&str` parses the name on every call.
const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
/// Longest id kept; longer or non-visible-ASCII ids are replaced.
pub const MAX_LEN: usize = 128;

/// The request's id, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdValue(pub HeaderValue);

/// Whether `value` is kept as is: 1..=128 bytes of visible ASCII.
#[must_use]
pub fn is_valid(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(u8::is_ascii_graphic)
}

/// Adds [`RequestId`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl RequestIdLayer {
    /// The layer.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

/// Ensures every request carries an `x-request-id` and its response echoes it.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<TaskLocalFuture<HeaderValue, S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = match req.headers().get(&NAME) {
            Some(v) if is_valid(v.as_bytes()) => v.clone(),
            _ => {
                let hex = match req.extensions().get::<Served>() {
                    Some(served) => served.context.trace_hex(),
                    None => rt::random_hex128(),
                };
                let mut id = HeaderValue::try_from(hex).expect("hex is a valid header value");
                // A fresh value per call is never worth a slot in HTTP/2's
                // header table: sent as a literal, it evicts nothing.
                id.set_sensitive(true);
                req.headers_mut().insert(NAME, id.clone());
                id
            }
        };
        req.extensions_mut().insert(RequestIdValue(id.clone()));
        ResponseFuture {
            inner: rt::trace::with_request_id(id.clone(), self.inner.call(req)),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Echoes the id on the response.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().entry(NAME).or_insert(id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::trace::TraceContext;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// Answers with the id the handler saw in its extension, as the body.
    fn echo() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> {
        tower::service_fn(|req: Request<()>| async move {
            let seen = req
                .extensions()
                .get::<RequestIdValue>()
                .map(|v| v.0.to_str().unwrap().to_owned());
            // The handler's task knows it too (for the errors it builds).
            assert_eq!(rt::trace::request_id(), seen);
            Ok::<_, Infallible>(Response::new(seen.unwrap_or_default()))
        })
    }

    #[tokio::test]
    async fn propagates_a_valid_id() {
        let req = Request::builder()
            .header(HEADER, "abc-123")
            .body(())
            .unwrap();
        let res = RequestIdLayer.layer(echo()).oneshot(req).await.unwrap();
        assert_eq!(res.headers()[HEADER], "abc-123");
        assert_eq!(res.body(), "abc-123");
    }

    #[tokio::test]
    async fn takes_the_trace_id_when_there_is_none() {
        let ctx = TraceContext::root();
        let mut req = Request::new(());
        req.extensions_mut().insert(Served {
            context: ctx,
            remote_parent: None,
        });
        let res = RequestIdLayer.layer(echo()).oneshot(req).await.unwrap();
        let want = format!("{:032x}", ctx.trace_id);
        assert_eq!(res.headers()[HEADER], want.as_str());
        assert_eq!(res.body(), &want);
        // A valid id of the caller's own still wins.
        let mut req = Request::builder().header(HEADER, "mine").body(()).unwrap();
        req.extensions_mut().insert(Served {
            context: ctx,
            remote_parent: None,
        });
        let res = RequestIdLayer.layer(echo()).oneshot(req).await.unwrap();
        assert_eq!(res.headers()[HEADER], "mine");
    }

    #[tokio::test]
    async fn replaces_missing_or_malformed_ids() {
        for bad in [
            None,
            Some(""),
            Some("has space"),
            Some(&*"x".repeat(MAX_LEN + 1)),
        ] {
            let mut builder = Request::builder();
            if let Some(bad) = bad {
                builder = builder.header(HEADER, bad);
            }
            let res = RequestIdLayer
                .layer(echo())
                .oneshot(builder.body(()).unwrap())
                .await
                .unwrap();
            let id = res.headers()[HEADER].to_str().unwrap().to_owned();
            assert_eq!(id.len(), 32, "generated ids are 128-bit hex: {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(
                res.body(),
                &id,
                "the handler sees the id the response carries"
            );
        }
    }
}
