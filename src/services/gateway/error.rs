//! The API's errors: an HTTP status and a JSON body `{"error": "..."}`.
//! A service's answer keeps its message unless it is internal: the client
//! then reads `internal error (request id ...)`, the id its response's
//! `x-request-id` carries, and the cause goes to the log under that id.
//! HTTP statuses come from [`ErrorKind::http_status`], the one mapping.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::client::PoolError;
use crate::error::{ErrorKind, internal_message};
use crate::rt;

/// A failed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 500 for a failure of ours: `cause` is logged with the request id,
    /// which is all the client reads.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let id = rt::trace::request_id();
        tracing::error!(
            request_id = id.as_deref().unwrap_or("-"),
            error = %crate::error::Chain(cause),
            "internal error"
        );
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            internal_message(id.as_deref()),
        )
    }

    /// The error for a failed call to an upload (`upload`: RESOURCE_EXHAUSTED
    /// means the file is too large, not that we are busy).
    #[must_use]
    pub fn from_status(status: &tonic::Status, upload: bool) -> Self {
        let kind = ErrorKind::of_status(status);
        let http = http_status(kind, upload);
        if kind == ErrorKind::Internal {
            let id = rt::trace::request_id();
            tracing::error!(
                request_id = id.as_deref().unwrap_or("-"),
                code = ?status.code(),
                message = status.message(),
                "a service failed"
            );
            return Self::new(http, internal_message(id.as_deref()));
        }
        let message = if status.message().is_empty() {
            // Never an empty body: say at least which code came back.
            format!("upstream answered {:?}", status.code())
        } else {
            status.message().to_owned()
        };
        Self::new(http, message)
    }
}

/// The HTTP status for a service's answer of `kind`
/// ([`ErrorKind::of_status`]): the kind's ([`ErrorKind::http_status`]), but
/// 413 for an upload refused as too large (a full disk stays 507).
#[must_use]
pub fn http_status(kind: ErrorKind, upload: bool) -> StatusCode {
    match kind {
        ErrorKind::Exhausted if upload => StatusCode::PAYLOAD_TOO_LARGE,
        kind => kind.http_status(),
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status, false)
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        Self::from_status(&tonic::Status::from(e), false)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme the client should use.
            res.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_codes_map_to_http() {
        // The gateway goes kind -> code -> HTTP status and back the same way
        // (the table itself is tested in `crate::error`).
        for kind in ErrorKind::ALL {
            assert_eq!(http_status(kind, false), kind.http_status());
        }
        let of = |code| ErrorKind::from_code(code);
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::FailedPrecondition, 409),
            (Code::OutOfRange, 416),
            (Code::ResourceExhausted, 429),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unknown, 500),
            (Code::Ok, 500),
        ];
        for (code, want) in cases {
            assert_eq!(http_status(of(code), false).as_u16(), want, "{code:?}");
        }
        assert_eq!(http_status(of(Code::ResourceExhausted), true).as_u16(), 413);
        assert_eq!(http_status(of(Code::NotFound), true).as_u16(), 404);
        // A full disk, as a service says it: 507 whatever the route.
        let full = crate::error::status_for(
            &crate::blob::BlobError::Io(std::io::ErrorKind::StorageFull.into()),
            Some("r1"),
        );
        for upload in [false, true] {
            let e = ApiError::from_status(&full, upload);
            assert_eq!(e.status.as_u16(), 507, "upload {upload}");
            assert_eq!(e.message, crate::error::STORAGE_FULL_MESSAGE);
        }
        let eio = crate::error::status_for(
            &crate::blob::BlobError::Io(std::io::Error::from_raw_os_error(5)),
            Some("r1"),
        );
        let e = ApiError::from_status(&eio, true);
        assert_eq!(
            (e.status.as_u16(), e.message.as_str()),
            (503, "blob store I/O failed")
        );
    }

    #[tokio::test]
    async fn errors_have_a_json_body() {
        let res = ApiError::from(tonic::Status::not_found("no video \"x\"")).into_response();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json, serde_json::json!({"error": "no video \"x\""}));
        let bare = ApiError::from(tonic::Status::unimplemented(""));
        assert_eq!(bare.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!bare.message.is_empty());
        // A service's internal failure: its text stays in the log.
        let id = http::HeaderValue::from_static("4bf92f3577b34da6");
        let internal = rt::trace::with_request_id(id, async {
            ApiError::from(tonic::Status::internal("no such table: videos"))
        })
        .await;
        assert_eq!(
            (internal.status, internal.message.as_str()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (request id 4bf92f3577b34da6)"
            )
        );
        let res = ApiError::from(tonic::Status::unauthenticated("no")).into_response();
        assert_eq!(res.headers()[http::header::WWW_AUTHENTICATE], "Bearer");
        let pool = ApiError::from(PoolError::NoInstance("metadata".into()));
        assert_eq!(pool.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
