//! W3C trace context across calls: the server layer reads `traceparent`
//! (or starts a trace), opens a span for the call and makes the context
//! current for the handler; the client layer sends a child `traceparent`
//! on every outgoing call. Events carry the same header in their envelope.
//!
//! `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.

use std::task::{Context, Poll};

use http::{HeaderValue, Request};
use tower::{Layer, Service};

use crate::rt::trace::CURRENT;
pub use crate::rt::trace::{HEADER, TraceContext, current, in_context};

/// [`HEADER`] made once: a lookup by `&str` parses the name on every call.
const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// What the server trace layer puts in a request's extensions (one entry:
/// every extension costs a map insert on every call): the call's context
/// and the caller's span id, if it sent one (the server span's parent, for
/// exported spans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The call's own position in the trace.
    pub context: TraceContext,
    /// The caller's span.
    pub remote_parent: Option<u64>,
}

/// Server side: continues the caller's trace (or starts one) for each call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// See [`ServerTraceLayer`].
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ServerTrace<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<
        TraceContext,
        tracing::instrument::Instrumented<S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let parent = req
            .headers()
            .get(&NAME)
            .and_then(|v| TraceContext::parse(v.as_bytes()));
        let ctx = parent.map_or_else(TraceContext::root, |parent| parent.child());
        req.extensions_mut().insert(Served {
            context: ctx,
            remote_parent: parent.map(|p| p.span_id),
        });
        let span = tracing::info_span!(
            "call",
            path = req.uri().path(),
            trace_id = %format_args!("{:032x}", ctx.trace_id),
            span_id = %format_args!("{:016x}", ctx.span_id),
        );
        use tracing::Instrument as _;
        CURRENT.scope(ctx, self.inner.call(req).instrument(span))
    }
}

/// Client side: sends a child of the current context (or a new trace).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// See [`ClientTraceLayer`].
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = current().map_or_else(TraceContext::root, |c| c.child());
        let mut value = HeaderValue::try_from(ctx.header()).expect("hex is a valid header");
        // New per call: never worth a slot in HTTP/2's header table.
        value.set_sensitive(true);
        req.headers_mut().insert(NAME, value);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[test]
    fn parses_the_w3c_example_and_refuses_the_rest() {
        let ctx = TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .unwrap();
        assert_eq!(ctx.trace_id, 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c);
        assert_eq!(
            ctx.header(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        for bad in [
            &b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        ] {
            assert_eq!(
                TraceContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_never_panics(trace in 1u128.., span in 1u64.., flags in any::<u8>(), junk in prop::collection::vec(any::<u8>(), 0..80)) {
            let ctx = TraceContext { trace_id: trace, span_id: span, flags };
            prop_assert_eq!(TraceContext::parse(ctx.header().as_bytes()), Some(ctx));
            let _ = TraceContext::parse(&junk);
        }

        /// The in-place parser agrees with the straightforward one (split
        /// on `-`, `from_str_radix`) on near-miss headers: a valid one with
        /// a few bytes replaced from an alphabet of the likely mistakes.
        #[test]
        fn agrees_with_a_reference_parser(trace in any::<u128>(), span in any::<u64>(), flags in any::<u8>(), edits in prop::collection::vec((0usize..60, prop::sample::select(b"0aAfFg-x".to_vec())), 0..3), cut in 50usize..60) {
            let mut value = TraceContext { trace_id: trace, span_id: span, flags }.header().into_bytes();
            for (at, byte) in edits {
                if at < value.len() {
                    value[at] = byte;
                }
            }
            value.truncate(cut);
            prop_assert_eq!(TraceContext::parse(&value), reference_parse(&value));
        }
    }

    fn reference_parse(value: &[u8]) -> Option<TraceContext> {
        let s = std::str::from_utf8(value).ok()?;
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace, span, flags] = parts[..] else {
            return None;
        };
        let hex = |p: &str, len: usize| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let ctx = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (ctx.trace_id != 0 && ctx.span_id != 0).then_some(ctx)
    }

    #[tokio::test]
    async fn a_call_chain_keeps_one_trace_with_new_spans() {
        // Server handler that makes a downstream call and returns what it sent.
        let downstream = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(
                req.headers()
                    .get(HEADER)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned(),
            )
        });
        let handler = tower::service_fn(move |req: Request<()>| {
            let downstream = downstream;
            async move {
                let seen = req.extensions().get::<Served>().unwrap().context;
                let sent = ClientTraceLayer
                    .layer(downstream)
                    .oneshot(Request::new(()))
                    .await?;
                Ok::<_, Infallible>((seen, TraceContext::parse(sent.as_bytes()).unwrap()))
            }
        });
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let req = Request::builder()
            .header(HEADER, incoming)
            .body(())
            .unwrap();
        let (server_ctx, downstream_ctx) =
            ServerTraceLayer.layer(handler).oneshot(req).await.unwrap();
        let parent = TraceContext::parse(incoming.as_bytes()).unwrap();
        assert_eq!(server_ctx.trace_id, parent.trace_id);
        assert_ne!(server_ctx.span_id, parent.span_id);
        assert_eq!(
            downstream_ctx.trace_id, parent.trace_id,
            "the trace crosses the call"
        );
        assert_ne!(downstream_ctx.span_id, server_ctx.span_id);
    }
}
