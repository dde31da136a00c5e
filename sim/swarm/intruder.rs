//! An intruder: a node holding a valid identity of one service (the
//! worker's service token, what a compromised worker holds) that keeps
//! calling, through the safety phase, methods the call policy does not let
//! the worker call, on every instance of those services in turn. Every node
//! of the swarm serves under StreamGate's own policy
//! (`config/call-policy.toml`, `check::call_policy`), so the rest of the
//! workload also proves the policy allows every call the pipeline makes.
//!
//! The checker: no such call is ever answered by a service. The only
//! answers allowed are PERMISSION_DENIED and the failures of a path that
//! never reached one (an instance down, partitioned, slow). The
//! `policy-skipped` injected bug makes servers skip the policy; the first
//! call that lands is then a violation.
//!
//! In the simulator a node's identity is its service token: the simulated
//! transport carries no TLS, so certificates are not modelled here; the
//! same check runs on a certificate's name over real mutual TLS in
//! `tests/mtls.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng as _;
use streamgate::middleware::auth::AttachLayer;
use streamgate::proto::auth_service_client::AuthServiceClient;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::proto::monitor_service_client::MonitorServiceClient;
use streamgate::proto::streaming_service_client::StreamingServiceClient;
use streamgate::proto::upload_service_client::UploadServiceClient;
use streamgate::proto::{
    CacheGetRequest, GetPlaylistRequest, GetStatusRequest, ListUploadsRequest, ValidateTokenRequest,
};
use streamgate::rt::{self, transport};
use streamgate::services::ServiceKind;
use tonic::Code;
use tower::Layer as _;

use super::cluster::Cluster;
use super::timeline::{Kind, Timeline};

/// The identity the intruder holds.
pub const IDENTITY: &str = "worker";
/// Longest one call may take.
const CALL_LIMIT: Duration = Duration::from_secs(3);
const LANE: &str = "intruder";

/// The method the intruder calls on a service the policy closes to the
/// worker; `None` for the services the worker may call.
fn forbidden(kind: ServiceKind) -> Option<&'static str> {
    match kind {
        ServiceKind::Upload => Some("UploadService/ListUploads"),
        ServiceKind::Auth => Some("AuthService/ValidateToken"),
        ServiceKind::Streaming => Some("StreamingService/GetPlaylist"),
        ServiceKind::Cache => Some("CacheService/Get"),
        ServiceKind::Monitor => Some("MonitorService/GetStatus"),
        ServiceKind::ApiGateway
        | ServiceKind::Metadata
        | ServiceKind::Transcoder
        | ServiceKind::Worker => None,
    }
}

/// One call of `kind`'s forbidden method at `addr`, as the worker.
async fn call(kind: ServiceKind, addr: SocketAddr) -> Result<(), tonic::Status> {
    let channel =
        AttachLayer::new(&crate::common::keys(), IDENTITY).layer(transport::channel(addr));
    match kind {
        ServiceKind::Upload => UploadServiceClient::new(channel)
            .list_uploads(ListUploadsRequest::default())
            .await
            .map(drop),
        ServiceKind::Auth => AuthServiceClient::new(channel)
            .validate_token(ValidateTokenRequest {
                token: "intruder".into(),
                ..ValidateTokenRequest::default()
            })
            .await
            .map(drop),
        ServiceKind::Streaming => StreamingServiceClient::new(channel)
            .get_playlist(GetPlaylistRequest::default())
            .await
            .map(drop),
        ServiceKind::Cache => CacheServiceClient::new(channel)
            .get(CacheGetRequest {
                key: "intruder".into(),
            })
            .await
            .map(drop),
        _ => MonitorServiceClient::new(channel)
            .get_status(GetStatusRequest::default())
            .await
            .map(drop),
    }
}

/// Whether a failure came before any service answered: the instance
/// unreachable, down or slow (the transport's and the deadline's codes).
fn not_reached(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Calls outside the policy until `until` on the timeline; a call a service
/// answers is a violation.
pub async fn run(cluster: Cluster, tl: Timeline, until: Duration) {
    let targets: Vec<(ServiceKind, SocketAddr, &'static str)> = cluster
        .members
        .iter()
        .filter_map(|m| {
            let method = forbidden(m.kind)?;
            Some((m.kind, SocketAddr::new(m.ip, m.kind.default_port()), method))
        })
        .collect();
    if targets.is_empty() {
        return;
    }
    let (mut refused, mut unreached) = (0u64, 0u64);
    let mut next = 0usize;
    while tl.elapsed() < until {
        let (kind, addr, method) = targets[next % targets.len()];
        next += 1;
        match rt::timeout(CALL_LIMIT, call(kind, addr)).await {
            Ok(Err(s)) if s.code() == Code::PermissionDenied => {
                rt::coverage::hit(super::coverage::POLICY);
                refused += 1;
            }
            Ok(Err(s)) if not_reached(s.code()) => unreached += 1,
            Err(rt::Elapsed) => unreached += 1,
            Ok(Ok(())) => tl.violated(
                LANE,
                format_args!("a call outside the call policy succeeded: {IDENTITY} called {method} on {addr}"),
            ),
            Ok(Err(s)) => tl.violated(
                LANE,
                format_args!(
                    "a call outside the call policy reached the service: {IDENTITY} called {method} on {addr}: {:?} {}",
                    s.code(),
                    s.message()
                ),
            ),
        }
        rt::sleep(Duration::from_millis(rt::rng().gen_range(200..1500))).await;
    }
    tl.print(
        LANE,
        Kind::Check,
        format_args!(
            "{refused} calls outside the call policy refused, {unreached} reached no service"
        ),
    );
}
