//! One set of error kinds for every service, with the one mapping of each
//! to a gRPC code and to an HTTP status, and one rule for what a caller
//! reads: an error's `Display` is its public message, its `source()` chain
//! holds the low-level cause, which is logged (with the request id) and
//! never sent. An internal error says only `internal error (request id …)`.
//!
//! Each service has its own `error.rs`: a `thiserror` enum whose variants
//! keep their sources, [`Classify`] for its kind, and `From<…> for
//! tonic::Status` through [`status`].

use std::error::Error;
use std::fmt;

use http::StatusCode;
use tonic::Code;

use crate::rt;

/// The gRPC status code in `headers` (a response's trailers, or the head
/// of a trailers-only response), `None` without one. Reads only the
/// `grpc-status` header: [`tonic::Status::from_header_map`] also decodes
/// the message and copies every other header, which code-only readers (the
/// metrics, the breaker, the error log) would pay on every call.
#[must_use]
pub fn grpc_code(headers: &http::HeaderMap) -> Option<Code> {
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers
        .get(&GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// What kind of failure an error is, as far as a caller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or breaks a limit; the message names the
    /// field.
    Invalid,
    /// What the request names does not exist.
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The state of what the request names does not allow it (yet).
    Conflict,
    /// The call lost a race (a watch fell behind); start it again.
    Aborted,
    /// A read starts past the end.
    OutOfRange,
    /// No credentials, or credentials that are not valid.
    Unauthenticated,
    /// Valid credentials that do not allow the request.
    PermissionDenied,
    /// A limit or quota is used up; retry later, or ask for less.
    Exhausted,
    /// The server's storage is full (a disk without space): nothing was
    /// stored; retry once space is freed.
    StorageFull,
    /// A dependency cannot be reached now (the message may name it);
    /// retrying may help.
    Unavailable,
    /// The deadline passed before the work was done.
    DeadlineExceeded,
    /// A bug, or a failure of ours the caller can do nothing about.
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 13] = [
        Self::Invalid,
        Self::NotFound,
        Self::AlreadyExists,
        Self::Conflict,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::Exhausted,
        Self::StorageFull,
        Self::Unavailable,
        Self::DeadlineExceeded,
        Self::Internal,
    ];

    /// The gRPC code of this kind.
    #[must_use]
    pub const fn code(self) -> Code {
        match self {
            Self::Invalid => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::Conflict => Code::FailedPrecondition,
            Self::Aborted => Code::Aborted,
            Self::OutOfRange => Code::OutOfRange,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::Exhausted | Self::StorageFull => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Internal => Code::Internal,
        }
    }

    /// The kind of another service's answer: its code's, made precise by
    /// [`KIND_HEADER`] where one code stands for two kinds (a full disk is
    /// RESOURCE_EXHAUSTED, as a used-up quota is).
    #[must_use]
    pub fn of_status(status: &tonic::Status) -> Self {
        let kind = Self::from_code(status.code());
        let named = status
            .metadata()
            .get(KIND_HEADER)
            .and_then(|v| v.to_str().ok());
        match (kind, named) {
            (Self::Exhausted, Some(STORAGE_FULL_NAME)) => Self::StorageFull,
            _ => kind,
        }
    }

    /// The kind of a gRPC code (from another service's answer). Codes no
    /// service of ours sends on purpose (`UNKNOWN`, `DATA_LOSS`,
    /// `UNIMPLEMENTED`, `CANCELLED`, and `OK` where an error was expected)
    /// are internal.
    #[must_use]
    pub const fn from_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument => Self::Invalid,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::FailedPrecondition => Self::Conflict,
            Code::Aborted => Self::Aborted,
            Code::OutOfRange => Self::OutOfRange,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::ResourceExhausted => Self::Exhausted,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded => Self::DeadlineExceeded,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => Self::Internal,
        }
    }

    /// The HTTP status of this kind (the API gateway's answer).
    #[must_use]
    pub const fn http_status(self) -> StatusCode {
        match self {
            Self::Invalid => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::Conflict | Self::Aborted => StatusCode::CONFLICT,
            Self::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::Exhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the server (or what it depends on), not the caller, failed.
    #[must_use]
    pub const fn is_server_fault(self) -> bool {
        matches!(
            self,
            Self::StorageFull | Self::Unavailable | Self::DeadlineExceeded | Self::Internal
        )
    }
}

/// The gRPC metadata entry naming a kind that a code alone does not tell
/// apart from another (only [`ErrorKind::StorageFull`] so far).
pub const KIND_HEADER: &str = "x-error-kind";
/// [`KIND_HEADER`]'s value for [`ErrorKind::StorageFull`].
const STORAGE_FULL_NAME: &str = "storage-full";
/// What a caller reads for a full disk, whichever store it was.
pub const STORAGE_FULL_MESSAGE: &str = "insufficient storage: nothing was stored; try again later";

/// The kind of an I/O failure of our storage: a full disk (or quota) is
/// [`ErrorKind::StorageFull`]; any other error the system reported (EIO, a
/// read-only or vanished disk) [`ErrorKind::Unavailable`]: the request was
/// fine, the storage could not take it now; an error of our own making (a
/// file that changed underneath, a task that panicked) is internal.
#[must_use]
pub fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            ErrorKind::StorageFull
        }
        _ if e.raw_os_error().is_some() => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}

/// An error that knows its [`ErrorKind`]. Its `Display` is what a caller
/// may read (unless the kind is [`ErrorKind::Internal`]); its sources are
/// for the log.
pub trait Classify: Error {
    /// The kind of failure.
    fn kind(&self) -> ErrorKind;
}

/// An error and its sources, `outer: inner: innermost`, for a log line.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a caller reads for an internal error: nothing of the cause, only
/// the request id that names it in the log.
#[must_use]
pub fn internal_message(request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => format!("internal error (request id {id})"),
        None => "internal error".to_owned(),
    }
}

/// The gRPC status for `e`, in the call being handled on this task (see
/// [`rt::trace::request_id`]): its kind's code, and its public message (for
/// an internal error, [`internal_message`]). A server fault is logged with
/// its whole chain and the request id (one that is not internal only when it
/// has a cause its message leaves out).
#[must_use]
pub fn status<E: Classify + ?Sized>(e: &E) -> tonic::Status {
    status_for(e, rt::trace::request_id().as_deref())
}

/// As [`status`], for the call named `request_id` (work that outlives the
/// handler's task, e.g. a response stream, captures it first).
#[must_use]
pub fn status_for<E: Classify + ?Sized>(e: &E, request_id: Option<&str>) -> tonic::Status {
    let kind = e.kind();
    let id = request_id.unwrap_or("-");
    let message = match kind {
        ErrorKind::Internal => {
            tracing::error!(request_id = id, error = %Chain(&e), "internal error");
            internal_message(request_id)
        }
        ErrorKind::StorageFull => {
            tracing::warn!(request_id = id, error = %Chain(&e), "storage full");
            STORAGE_FULL_MESSAGE.to_owned()
        }
        // The server stack logs every failed call with its message; the
        // cause, which the message leaves out, is logged here.
        k if k.is_server_fault() && e.source().is_some() => {
            tracing::warn!(request_id = id, ?kind, error = %Chain(&e), "dependency failed");
            e.to_string()
        }
        _ => e.to_string(),
    };
    let mut status = tonic::Status::new(kind.code(), message);
    if kind == ErrorKind::StorageFull {
        status.metadata_mut().insert(
            KIND_HEADER,
            tonic::metadata::MetadataValue::from_static(STORAGE_FULL_NAME),
        );
    }
    status
}

/// A status from another service, as an error this service can return:
/// its kind is the code's and its message passes on, except an internal
/// one, which becomes this call's own (naming this call's request id; the
/// service that failed logged the cause).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.message())]
pub struct Upstream(pub tonic::Status);

impl Classify for Upstream {
    fn kind(&self) -> ErrorKind {
        ErrorKind::of_status(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one table: each kind, its gRPC code, and its HTTP status.
    #[test]
    fn kinds_map_to_one_code_and_one_http_status() {
        let table = [
            (ErrorKind::Invalid, Code::InvalidArgument, 400),
            (ErrorKind::NotFound, Code::NotFound, 404),
            (ErrorKind::AlreadyExists, Code::AlreadyExists, 409),
            (ErrorKind::Conflict, Code::FailedPrecondition, 409),
            (ErrorKind::Aborted, Code::Aborted, 409),
            (ErrorKind::OutOfRange, Code::OutOfRange, 416),
            (ErrorKind::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorKind::Exhausted, Code::ResourceExhausted, 429),
            (ErrorKind::StorageFull, Code::ResourceExhausted, 507),
            (ErrorKind::Unavailable, Code::Unavailable, 503),
            (ErrorKind::DeadlineExceeded, Code::DeadlineExceeded, 504),
            (ErrorKind::Internal, Code::Internal, 500),
        ];
        assert_eq!(table.len(), ErrorKind::ALL.len(), "every kind is listed");
        for (kind, code, http) in table {
            assert_eq!(kind.code(), code, "{kind:?}");
            if kind != ErrorKind::StorageFull {
                assert_eq!(ErrorKind::from_code(code), kind, "{code:?} comes back");
            }
            assert_eq!(kind.http_status().as_u16(), http, "{kind:?}");
        }
        for code in [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::Unimplemented,
            Code::DataLoss,
        ] {
            assert_eq!(ErrorKind::from_code(code), ErrorKind::Internal, "{code:?}");
        }
    }

    #[test]
    fn a_full_disk_crosses_the_wire_as_itself() {
        use std::io::ErrorKind as Io;
        let full = std::io::Error::from(Io::StorageFull);
        assert_eq!(io_kind(&full), ErrorKind::StorageFull);
        assert_eq!(
            io_kind(&std::io::Error::from(Io::QuotaExceeded)),
            ErrorKind::StorageFull
        );
        assert_eq!(
            io_kind(&std::io::Error::from_raw_os_error(5)),
            ErrorKind::Unavailable
        );
        let s = status_for(&Probe::Full(full), Some("r1"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, STORAGE_FULL_MESSAGE)
        );
        assert!(!s.message().contains("/srv"), "the cause stays in the log");
        assert_eq!(ErrorKind::of_status(&s), ErrorKind::StorageFull);
        // Passed on by another service, it stays a full disk.
        let again = status_for(&Upstream(s), Some("r2"));
        assert_eq!(ErrorKind::of_status(&again), ErrorKind::StorageFull);
        let quota = tonic::Status::resource_exhausted("too many sessions");
        assert_eq!(ErrorKind::of_status(&quota), ErrorKind::Exhausted);
    }

    #[derive(Debug, thiserror::Error)]
    enum Probe {
        #[error("no space at /srv/x")]
        Full(#[source] std::io::Error),
        #[error("title: at most 200 bytes")]
        Invalid,
        #[error("the store failed")]
        Store(#[source] std::io::Error),
        #[error("the store is unavailable")]
        Down(#[source] std::io::Error),
    }

    impl Classify for Probe {
        fn kind(&self) -> ErrorKind {
            match self {
                Self::Invalid => ErrorKind::Invalid,
                Self::Store(_) => ErrorKind::Internal,
                Self::Down(_) => ErrorKind::Unavailable,
                Self::Full(e) => io_kind(e),
            }
        }
    }

    #[test]
    fn only_public_messages_reach_the_caller() {
        let s = status_for(&Probe::Invalid, Some("abc"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "title: at most 200 bytes")
        );
        let disk = || std::io::Error::other("disk I/O error at /srv/x.sqlite");
        let s = status_for(&Probe::Store(disk()), Some("abc"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Internal, "internal error (request id abc)")
        );
        assert_eq!(
            status_for(&Probe::Store(disk()), None).message(),
            "internal error"
        );
        let s = status_for(&Probe::Down(disk()), Some("abc"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "the store is unavailable")
        );
        let e = Probe::Store(disk());
        assert_eq!(
            Chain(&e).to_string(),
            "the store failed: disk I/O error at /srv/x.sqlite"
        );
    }

    #[test]
    fn an_upstream_answer_keeps_its_kind_but_not_its_internals() {
        let e = Upstream(tonic::Status::not_found("no video v1"));
        let s = status_for(&e, Some("r1"));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "no video v1"));
        let e = Upstream(tonic::Status::unknown("h2 protocol error"));
        let s = status_for(&e, Some("r1"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Internal, "internal error (request id r1)")
        );
    }
}
