//! The server layer stacks, built in this one place: what every gRPC
//! service runs behind, and what the public HTTP edge (the gateway) runs
//! behind. ARCHITECTURE.md lists the layers and why they are in this order.

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};

use super::auth::{Keyring, VerifyLayer};
use super::error::ErrorLayer;
use super::metrics::{Metrics, MetricsLayer};
use super::policy::CallPolicy;
use super::rate_limit::RateLimitLayer;
use super::request_id::RequestIdLayer;
use super::timeout::TimeoutLayer;
use super::trace::ServerTraceLayer;

/// Deadline of a call that sets none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest deadline a call may ask for.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long server-side calls may run.
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// For a call that sets no `grpc-timeout`.
    pub default: Duration,
    /// The most a call may ask for.
    pub max: Duration,
    /// Methods (by path) allowed a longer deadline (e.g. an upload stream).
    pub max_for: Vec<(&'static str, Duration)>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            default: DEFAULT_CALL_TIMEOUT,
            max: MAX_CALL_TIMEOUT,
            max_for: Vec::new(),
        }
    }
}

/// The gRPC server stack's type (outermost layer last in the nesting).
pub type GrpcServer = ServiceBuilder<
    Stack<
        RateLimitLayer,
        Stack<
            VerifyLayer,
            Stack<
                TimeoutLayer,
                Stack<
                    MetricsLayer,
                    Stack<ErrorLayer, Stack<RequestIdLayer, Stack<ServerTraceLayer, Identity>>>,
                >,
            >,
        >,
    >,
>;

/// What every service-to-service server runs behind, outermost first:
/// trace (continue the caller's trace), request id (the trace id unless the
/// call names one), error handling, metrics, deadline (`grpc-timeout`,
/// bounded by `deadlines`), the caller's identity (its certificate under
/// mutual TLS, else its service token verified with `keys`) checked against
/// `policy`, and a per-caller rate limit of `rate_limit` (burst, calls per
/// second).
#[must_use]
pub fn grpc_server(
    keys: Keyring,
    policy: Option<Arc<CallPolicy>>,
    metrics: Metrics,
    deadlines: &Deadlines,
    rate_limit: (u32, f64),
) -> GrpcServer {
    let timeout = deadlines.max_for.iter().fold(
        TimeoutLayer::new(deadlines.default, deadlines.max),
        |layer, &(path, max)| layer.with_max_for(path, max),
    );
    ServiceBuilder::new()
        .layer(ServerTraceLayer)
        .layer(RequestIdLayer::new())
        .layer(ErrorLayer)
        .layer(MetricsLayer::new(metrics))
        .layer(timeout)
        .layer(VerifyLayer::new(keys).with_policy(policy))
        .layer(RateLimitLayer::new(rate_limit.0, rate_limit.1))
}

/// The public HTTP edge's stack type.
pub type PublicHttp =
    ServiceBuilder<Stack<MetricsLayer, Stack<RequestIdLayer, Stack<ServerTraceLayer, Identity>>>>;

/// What the public HTTP API (and its health and gRPC health routes) runs
/// behind: trace, request id and metrics. No service token, gRPC deadline
/// or per-caller limit: the API has its own limits (the gateway's `limit`).
#[must_use]
pub fn public_http(metrics: Metrics) -> PublicHttp {
    ServiceBuilder::new()
        .layer(ServerTraceLayer)
        .layer(RequestIdLayer::new())
        .layer(MetricsLayer::new(metrics))
}
