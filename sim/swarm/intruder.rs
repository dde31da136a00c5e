//! An intruder: a node holding a valid identity of one service (the
//! worker's: its service token, or on the seeds that run mutual TLS its
//! certificate of the cluster CA, what a compromised worker holds) that
//! keeps calling, through the safety phase, methods the call policy does
//! not let the worker call, on every instance of those services in turn.
//! Every node of the swarm serves under StreamGate's own policy
//! (`config/call-policy.toml`, `check::call_policy`), so the rest of the
//! workload also proves the policy allows every call the pipeline makes.
//!
//! The checker: no such call is ever answered by a service. The only
//! answers allowed are PERMISSION_DENIED and the failures of a path that
//! never reached one (an instance down, partitioned, slow). The
//! `policy-skipped` injected bug makes servers skip the policy; the first
//! call that lands is then a violation.
//!
//! Under mutual TLS the intruder also takes turns with identities that
//! must not pass the handshake, each naming the api-gateway (which the
//! policy lets call all of these methods): a certificate of another CA,
//! an expired certificate of the cluster CA, and no certificate with a
//! valid api-gateway service token (a leaked token key is worth nothing
//! once services require certificates). The checker: such a call never
//! reaches a service, not even to be refused by it; its only answers are
//! the transport's. The `peer-unverified` injected bug makes servers take
//! any certificate; a call with the other CA's then lands.
//!
//! The certificates are modelled (`streamgate::rt::transport::SimCert`);
//! the same refusals run over real mutual TLS in `tests/mtls.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng as _;
use streamgate::middleware::auth::{Attach, AttachLayer};
use streamgate::proto::auth_service_client::AuthServiceClient;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::proto::monitor_service_client::MonitorServiceClient;
use streamgate::proto::streaming_service_client::StreamingServiceClient;
use streamgate::proto::upload_service_client::UploadServiceClient;
use streamgate::proto::{
    CacheGetRequest, GetPlaylistRequest, GetStatusRequest, ListUploadsRequest, ValidateTokenRequest,
};
use streamgate::rt::transport::{self, Mtls};
use streamgate::rt::{self};
use streamgate::services::ServiceKind;
use tonic::Code;
use tower::Layer as _;

use super::certs::{self, Ca};
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

/// What the intruder presents on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// The worker's own identity (its certificate under mutual TLS, else
    /// its token): valid, so the policy must refuse.
    Worker,
    /// A certificate of another CA naming the api-gateway.
    RogueCa,
    /// An expired certificate of the cluster CA naming the api-gateway.
    Expired,
    /// No certificate: plaintext, with a valid api-gateway token.
    NoCertificate,
}

impl Credential {
    /// Those a run's intruder takes turns with.
    fn all(tls: bool) -> &'static [Self] {
        if tls {
            &[
                Self::Worker,
                Self::RogueCa,
                Self::Expired,
                Self::NoCertificate,
            ]
        } else {
            &[Self::Worker]
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Worker => "the worker's identity",
            Self::RogueCa => "a certificate of another CA",
            Self::Expired => "an expired certificate",
            Self::NoCertificate => "no certificate",
        }
    }

    /// The channel to `kind` at `addr` presenting this credential (`ca`:
    /// the cluster's, under mutual TLS).
    fn channel(
        self,
        ca: Option<&Ca>,
        kind: ServiceKind,
        addr: SocketAddr,
    ) -> Attach<transport::Channel> {
        let gateway = ServiceKind::ApiGateway.name();
        let now = rt::unix_ms();
        let tls: Option<Mtls> = ca.and_then(|ca| match self {
            Self::Worker => Some(ca.identity(IDENTITY)),
            Self::RogueCa => Some(
                Mtls::simulated(
                    Ca::new(certs::ROGUE_CA).issue(gateway, now, certs::VALIDITY),
                    vec![certs::CA.to_owned()],
                )
                .expect("valid service"),
            ),
            Self::Expired => {
                let life = u64::try_from(certs::VALIDITY.as_millis()).unwrap_or(u64::MAX);
                Some(
                    Mtls::simulated(
                        ca.issue(gateway, now.saturating_sub(2 * life), certs::VALIDITY),
                        vec![certs::CA.to_owned()],
                    )
                    .expect("valid service"),
                )
            }
            Self::NoCertificate => None,
        });
        let token_as = if self == Self::Worker {
            IDENTITY
        } else {
            gateway
        };
        AttachLayer::new(&crate::common::keys(), token_as)
            .enabled(tls.is_none())
            .layer(transport::channel_to(addr, tls.as_ref(), kind.name()))
    }
}

/// One call of `kind`'s forbidden method over `channel`.
async fn call(kind: ServiceKind, channel: Attach<transport::Channel>) -> Result<(), tonic::Status> {
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

/// Whether a failure is the transport's alone (a connection refused,
/// closed or cut; a deadline): what a call that fails its handshake, or
/// finds the instance down or partitioned, gets.
fn transport_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
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
    let credentials = Credential::all(cluster.ca.is_some());
    let (mut refused, mut unreached, mut handshakes) = (0u64, 0u64, 0u64);
    let mut next = 0usize;
    while tl.elapsed() < until {
        let (kind, addr, method) = targets[next % targets.len()];
        let credential = credentials[(next / targets.len()) % credentials.len()];
        next += 1;
        let channel = credential.channel(cluster.ca.as_ref(), kind, addr);
        let outcome = rt::timeout(CALL_LIMIT, call(kind, channel)).await;
        if credential != Credential::Worker {
            let what = credential.describe();
            match outcome {
                Ok(Err(s))
                    if s.code() == Code::Unavailable && s.message().contains("TLS handshake") =>
                {
                    rt::coverage::hit(super::coverage::CERTIFICATES);
                    handshakes += 1;
                }
                Ok(Err(s)) if transport_failure(s.code()) => unreached += 1,
                Err(rt::Elapsed) => unreached += 1,
                Ok(Ok(())) => tl.violated(
                    LANE,
                    format_args!("a call with {what} succeeded: {method} on {addr}"),
                ),
                Ok(Err(s)) => tl.violated(
                    LANE,
                    format_args!(
                        "a call with {what} reached the service: {method} on {addr}: {:?} {}",
                        s.code(),
                        s.message()
                    ),
                ),
            }
            rt::sleep(Duration::from_millis(rt::rng().gen_range(200..1500))).await;
            continue;
        }
        match outcome {
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
            "{refused} calls outside the call policy refused, {handshakes} refused in the TLS handshake, {unreached} reached no service"
        ),
    );
}
