//! The router's own limits: a bound on requests in flight (held until the
//! response body is done, so streamed bodies count) and on query length.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::query::MAX_QUERY_BYTES;

/// Most requests in flight at once; more are answered 503 at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// The state of [`limit`]: the in-flight permits.
#[derive(Debug, Clone)]
pub struct Limits {
    in_flight: Arc<Semaphore>,
}

impl Limits {
    /// At most `max_in_flight` requests at once.
    #[must_use]
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }
}

/// Refuses long queries (414) and requests beyond the in-flight bound (503).
pub async fn limit(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("query: exceeds {MAX_QUERY_BYTES} bytes"),
        )
        .into_response();
    }
    let Ok(permit) = limits.in_flight.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight",
        )
        .into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    Response::from_parts(
        parts,
        Body::new(Guarded {
            inner: body,
            _permit: permit,
        }),
    )
}

pin_project_lite::pin_project! {
    /// A body that holds a permit until it is dropped.
    struct Guarded {
        #[pin]
        inner: Body,
        _permit: OwnedSemaphorePermit,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
