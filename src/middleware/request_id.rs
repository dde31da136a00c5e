//! `x-request-id`: keeps a well-formed incoming id, else takes the call's
//! trace id (so one id names a request across every hop without a header
//! of its own), else generates one. The handler sees it ([`of`] its
//! request's extensions, [`rt::trace::request_id`] while it runs), so an
//! internal error can name it. The response echoes it, except a success
//! for a caller that sent `traceparent` and no id: that caller knows the
//! id (its trace id), and every service-to-service call is such a call,
//! so the echo would cost each of them a header to encode and decode for
//! nothing; a failure always carries it, for the person who reads it.
//! Placed inside the server's trace layer, which puts the call's context
//! ([`Served`]) in the request's extensions.
//! The same layer on a client stamps outgoing calls that carry none (the
//! pool doesn't use it: its calls carry `traceparent`, from which the server
//! derives the id).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::Either;
use http::{HeaderValue, Request, Response};
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use super::trace::{Served, TraceContext};
use crate::rt;

/// The header's name.
pub const HEADER: &str = "x-request-id";
/// The same, made once: a lookup by `&str` parses the name on every call.
const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);
/// Longest id kept; longer or non-visible-ASCII ids are replaced.
pub const MAX_LEN: usize = 128;

/// The request's id, as a request extension, when it is not the call's
/// trace id (the caller sent an id of its own, or the call has no trace);
/// [`of`] reads either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdValue(pub HeaderValue);

/// What names a request this layer has seen, read from its extensions
/// without formatting anything (the error layer keeps it for a failure's
/// log line): its [`RequestIdValue`], else the trace id the server's
/// trace layer gave it.
#[derive(Debug, Clone)]
pub struct Named {
    given: Option<HeaderValue>,
    trace: Option<TraceContext>,
}

impl Named {
    /// Read from a request's extensions.
    #[must_use]
    pub fn of(extensions: &http::Extensions) -> Self {
        Self {
            given: extensions.get::<RequestIdValue>().map(|v| v.0.clone()),
            trace: extensions.get::<Served>().map(|served| served.context),
        }
    }

    /// The id as text.
    #[must_use]
    pub fn text(&self) -> Option<String> {
        match (&self.given, &self.trace) {
            (Some(id), _) => id.to_str().ok().map(str::to_owned),
            (None, Some(trace)) => Some(trace.trace_hex()),
            (None, None) => None,
        }
    }
}

/// The id of a request this layer has seen (see [`Named`]).
#[must_use]
pub fn of(extensions: &http::Extensions) -> Option<String> {
    Named::of(extensions).text()
}

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

/// Names every request (see the module doc) and echoes its id.
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
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let given = req
            .headers()
            .get(&NAME)
            .filter(|v| is_valid(v.as_bytes()))
            .cloned();
        let (id, known) = match (given, req.extensions().get::<Served>()) {
            (Some(id), _) => (Id::Given(id), false),
            // The trace id names the call: nothing to store (the extension
            // and the task's id are read from the trace), and a caller that
            // sent `traceparent` knows it.
            (None, Some(served)) => (Id::Trace(served.context), served.remote_parent.is_some()),
            (None, None) => {
                // No trace to name it: a new id, stamped on the request
                // (on a client, for the server it goes to).
                let id = header_value(rt::random_hex128());
                req.headers_mut().insert(NAME, id.clone());
                (Id::Given(id), false)
            }
        };
        let inner = match &id {
            Id::Given(id) => {
                req.extensions_mut().insert(RequestIdValue(id.clone()));
                Either::Left(rt::trace::with_request_id(id.clone(), self.inner.call(req)))
            }
            Id::Trace(_) => Either::Right(self.inner.call(req)),
        };
        ResponseFuture {
            inner,
            id: Some(id),
            known,
        }
    }
}

/// A generated id as a header value.
fn header_value(hex: String) -> HeaderValue {
    let mut id = HeaderValue::try_from(hex).expect("hex is a valid header value");
    // A fresh value per call is never worth a slot in HTTP/2's header
    // table: sent as a literal, it evicts nothing.
    id.set_sensitive(true);
    id
}

/// Where a call's id came from.
#[derive(Debug)]
enum Id {
    /// The caller's, or generated here.
    Given(HeaderValue),
    /// The call's trace id.
    Trace(TraceContext),
}

/// The inner call, with the id current on its task when it is not the
/// trace id ([`rt::trace::request_id`] reads the trace's otherwise).
type Inner<F> = Either<TaskLocalFuture<HeaderValue, F>, F>;

pin_project_lite::pin_project! {
    /// Echoes the id on the response.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
        id: Option<Id>,
        known: bool,
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
        let failed = || {
            response.status().as_u16() >= 400
                || crate::error::grpc_code(response.headers()).is_some_and(|c| c != tonic::Code::Ok)
        };
        if let Some(id) = this.id.take()
            && (!*this.known || failed())
        {
            let id = match id {
                Id::Given(id) => id,
                Id::Trace(context) => header_value(context.trace_hex()),
            };
            response.headers_mut().entry(NAME).or_insert(id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::trace::{ServerTraceLayer, TraceContext};
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// Answers with the id the handler saw, as the body, and the trace id
    /// it was served under in `x-trace`; with the status or `grpc-status`
    /// its request's `answer` header names.
    fn echo() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone
    {
        tower::service_fn(|req: Request<()>| async move {
            let seen = of(req.extensions());
            // The handler's task knows it too (for the errors it builds).
            assert_eq!(rt::trace::request_id(), seen);
            let mut res = Response::new(seen.unwrap_or_default());
            if let Some(served) = req.extensions().get::<Served>() {
                res.headers_mut().insert(
                    "x-trace",
                    HeaderValue::try_from(served.context.trace_hex()).unwrap(),
                );
            }
            match req.headers().get("answer").map(|v| v.to_str().unwrap()) {
                Some("500") => *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR,
                Some(code) => {
                    res.headers_mut()
                        .insert("grpc-status", HeaderValue::from_str(code).unwrap());
                }
                None => {}
            }
            Ok::<_, Infallible>(res)
        })
    }

    fn served() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> {
        ServerTraceLayer.layer(RequestIdLayer.layer(echo()))
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
        let res = served().oneshot(Request::new(())).await.unwrap();
        let trace = res.headers()["x-trace"].to_str().unwrap().to_owned();
        assert_eq!(trace.len(), 32);
        assert_eq!(res.headers()[HEADER], trace.as_str(), "a new trace: echoed");
        assert_eq!(res.body(), &trace);
        // A valid id of the caller's own still wins.
        let req = Request::builder().header(HEADER, "mine").body(()).unwrap();
        let res = served().oneshot(req).await.unwrap();
        assert_eq!(res.headers()[HEADER], "mine");
        assert_eq!(res.body(), "mine");
    }

    #[tokio::test]
    async fn a_caller_that_sent_its_trace_gets_the_id_on_failures_only() {
        let parent = TraceContext::root();
        for (answer, echoed) in [
            (None, false),
            (Some("0"), false),
            (Some("13"), true),
            (Some("5"), true),
            (Some("500"), true),
        ] {
            let mut req =
                Request::builder().header(crate::middleware::trace::HEADER, parent.header());
            if let Some(answer) = answer {
                req = req.header("answer", answer);
            }
            let res = served().oneshot(req.body(()).unwrap()).await.unwrap();
            let want = parent.trace_hex();
            assert_eq!(
                res.headers()["x-trace"],
                want.as_str(),
                "the caller's trace"
            );
            assert_eq!(res.body(), &want, "the handler knows the id either way");
            assert_eq!(
                res.headers().get(HEADER).map(|v| v.to_str().unwrap()),
                echoed.then_some(want.as_str()),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn on_a_client_stamps_calls_that_carry_none() {
        let server = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(
                req.headers()
                    .get(HEADER)
                    .map(|v| v.to_str().unwrap().to_owned()),
            ))
        });
        let res = RequestIdLayer
            .layer(server)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let sent = res.body().clone().expect("the call carries an id");
        assert_eq!(sent.len(), 32, "{sent}");
        assert_eq!(res.headers()[HEADER], sent.as_str());
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
