//! Error handling at the edge of every server: each failed call is logged
//! once (server faults as warnings, caller faults at debug), and an error
//! from the layers below becomes an INTERNAL status with a clear message
//! instead of a dropped connection. Handlers map their typed errors to
//! statuses themselves (`From<ServiceError> for tonic::Status`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Code;
use tower::{Layer, Service};

use super::request_id::Named;
use crate::error::internal_message;

/// Whether a status code means the server (not the caller) failed.
#[must_use]
pub fn is_server_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::Unavailable
            | Code::DeadlineExceeded
    )
}

/// Logs failed calls once and turns errors into statuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorLayer;

impl<S> Layer<S> for ErrorLayer {
    type Service = HandleErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HandleErrors { inner }
    }
}

/// See [`ErrorLayer`].
#[derive(Debug, Clone)]
pub struct HandleErrors<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for HandleErrors<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: std::fmt::Display,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A layer that is not ready now is retried by the server; its error
        // surfaces on the call instead.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Kept for the log line by reference count, not copied: most calls
        // never log.
        let uri = req.uri().clone();
        // What names the call, kept as it is: made into text only for a
        // failure.
        let request_id = Named::of(req.extensions());
        ResponseFuture {
            inner: self.inner.call(req),
            uri,
            request_id,
        }
    }
}

pin_project_lite::pin_project! {
    /// Logs the outcome and maps errors.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        uri: http::Uri,
        request_id: Named,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: std::fmt::Display,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let id = || this.request_id.text().unwrap_or_else(|| "-".to_owned());
        let path = this.uri.path();
        let response = match std::task::ready!(this.inner.poll(cx)) {
            Ok(response) => {
                // The code alone first: decoding the whole status (its
                // message, a copy of the headers) only for a failure.
                if let Some(code) = crate::error::grpc_code(response.headers())
                    && code != Code::Ok
                    && let Some(status) = tonic::Status::from_header_map(response.headers())
                {
                    if is_server_fault(code) {
                        tracing::warn!(path, request_id = id(), code = ?code, message = status.message(), "call failed");
                    } else {
                        tracing::debug!(path, request_id = id(), code = ?code, message = status.message(), "call refused");
                    }
                }
                response
            }
            Err(e) => {
                let id = id();
                tracing::error!(path, request_id = id, error = %e, "call failed inside the server");
                let status = tonic::Status::internal(internal_message(Some(&id)));
                let (parts, ()) = status.into_http::<()>().into_parts();
                Response::from_parts(parts, ResBody::default())
            }
        };
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_layer_error_becomes_an_internal_status() {
        let failing =
            tower::service_fn(|_req: Request<()>| async { Err::<Response<()>, _>("disk on fire") });
        let res = ErrorLayer
            .layer(failing)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("disk"),
            "internals are logged, not sent: {}",
            status.message()
        );
    }

    #[tokio::test]
    async fn statuses_pass_through() {
        let refusing = tower::service_fn(|_req: Request<()>| async {
            let (parts, ()) = tonic::Status::invalid_argument("key too long")
                .into_http::<()>()
                .into_parts();
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, ()))
        });
        let res = ErrorLayer
            .layer(refusing)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(res.headers()).unwrap();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "key too long")
        );
    }
}
