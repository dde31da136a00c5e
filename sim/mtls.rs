//! The simulated transport's model of mutual TLS (`rt/sim_transport.rs`),
//! case by case, on a cache node serving under a call policy that lets
//! only the api-gateway call it: what passes the handshake and what does
//! not, which identity the server reads, rotation and expiry. The same
//! refusals over real rustls: `tests/mtls.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::bus::memory::MemoryBus;
use streamgate::client::{ClientPool, PoolConfig};
use streamgate::kernel::Runtime;
use streamgate::middleware::auth::AttachLayer;
use streamgate::middleware::policy::CallPolicy;
use streamgate::proto::CacheGetRequest;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt::transport::{self, Mtls};
use streamgate::rt::{self};
use streamgate::services::{self, Common, ServiceConfig, ServiceKind};
use tonic::Code;
use tower::Layer as _;

use crate::swarm::certs::{CA, Ca, ROGUE_CA, VALIDITY};
use crate::trace::announce;

const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 7, 1)),
    9006,
);
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 7, 2));

/// One `Get` to the cache at [`SERVER`], presenting `tls` (or, without,
/// an api-gateway service token) and expecting the server to name
/// `expect`.
async fn get(tls: Option<&Mtls>, expect: ServiceKind) -> Result<(), tonic::Status> {
    let channel = AttachLayer::new(&crate::common::keys(), "api-gateway")
        .enabled(tls.is_none())
        .layer(transport::channel_to(SERVER, tls, expect.name()));
    let mut req = tonic::Request::new(CacheGetRequest { key: "k".into() });
    req.set_timeout(Duration::from_secs(2));
    CacheServiceClient::new(channel).get(req).await.map(drop)
}

fn refused_in_handshake(result: Result<(), tonic::Status>, what: &str) -> String {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().contains("TLS handshake"),
        "{what}: {status:?}"
    );
    status.message().to_owned()
}

fn trusting(cert: streamgate::rt::transport::SimCert, cas: &[&str]) -> Mtls {
    Mtls::simulated(cert, cas.iter().map(|s| (*s).to_owned()).collect()).expect("valid service")
}

#[madsim::test]
async fn mutual_tls_model() {
    let _progress = announce("mutual_tls_model");
    let handle = Handle::current();
    let ca = Ca::new(CA);
    let server_tls = ca.identity(ServiceKind::Cache.name());
    let served = server_tls.clone();
    handle
        .create_node()
        .name("cache")
        .ip(SERVER.ip())
        .init(move || {
            let tls = served.clone();
            async move {
                let registry = Arc::new(MemoryRegistry::new());
                let policy = CallPolicy::parse(
                    "[allow]\n\"streamgate.v1.CacheService/*\" = [\"api-gateway\"]\n",
                )
                .expect("policy parses");
                let runtime = Runtime {
                    registry: registry.clone(),
                    bus: Arc::new(MemoryBus::new()),
                    blobs: Arc::new(streamgate::blob::memory::MemoryBlobStore::new()),
                    pool: ClientPool::new(
                        registry,
                        PoolConfig {
                            tls: Some(tls),
                            policy: Some(Arc::new(policy)),
                            ..crate::common::pool("cache")
                        },
                    ),
                    keys: crate::common::keys(),
                    metrics: Default::default(),
                    ready: Default::default(),
                };
                let common = Common {
                    listen: SERVER,
                    ..Common::new(ServiceKind::Cache, SERVER.ip())
                };
                let _running =
                    services::start(&ServiceConfig::new(ServiceKind::Cache), &common, &runtime)
                        .await
                        .expect("cache starts");
                std::future::pending::<()>().await;
            }
        })
        .build();
    let client = handle.create_node().name("client").ip(CLIENT).build();
    client
        .spawn(async move {
            rt::sleep(Duration::from_secs(1)).await;
            let gateway = ca.identity("api-gateway");
            get(Some(&gateway), ServiceKind::Cache)
                .await
                .expect("a certificate of the CA the policy allows is served");

            // The server reads the caller from the certificate: no token
            // is sent, and the worker is refused by the policy, not by the
            // handshake.
            let worker = ca.identity("worker");
            let status = get(Some(&worker), ServiceKind::Cache)
                .await
                .expect_err("the policy refuses the worker");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

            let now = rt::unix_ms();
            let rogue = trusting(Ca::new(ROGUE_CA).issue("api-gateway", now, VALIDITY), &[CA]);
            refused_in_handshake(
                get(Some(&rogue), ServiceKind::Cache).await,
                "a certificate of another CA",
            );
            let expired = trusting(ca.issue("api-gateway", now - 120_000, VALIDITY), &[CA]);
            refused_in_handshake(
                get(Some(&expired), ServiceKind::Cache).await,
                "an expired certificate",
            );
            let early = trusting(ca.issue("api-gateway", now + 60_000, VALIDITY), &[CA]);
            refused_in_handshake(
                get(Some(&early), ServiceKind::Cache).await,
                "a certificate not yet valid",
            );
            let status = get(None, ServiceKind::Cache)
                .await
                .expect_err("no certificate: a token does not open a TLS port");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");

            // The client checks the server: the cache is not the auth service.
            let why = refused_in_handshake(
                get(Some(&gateway), ServiceKind::Auth).await,
                "a server naming another service",
            );
            assert!(why.contains("names cache, not auth"), "{why}");
            // A client not trusting the server's CA refuses it.
            let distrustful = trusting(ca.issue("api-gateway", now, VALIDITY), &[ROGUE_CA]);
            refused_in_handshake(
                get(Some(&distrustful), ServiceKind::Cache).await,
                "a server of an untrusted CA",
            );

            // The server's certificate expires: every call fails until a
            // new one is written, then works with no restart.
            rt::sleep(VALIDITY + Duration::from_secs(1)).await;
            let gateway = ca.identity("api-gateway");
            refused_in_handshake(
                get(Some(&gateway), ServiceKind::Cache).await,
                "a server whose certificate expired",
            );
            server_tls
                .rotate(
                    ca.issue("cache", rt::unix_ms(), VALIDITY),
                    vec![CA.to_owned()],
                )
                .expect("a renewed certificate of the same service is taken");
            get(Some(&gateway), ServiceKind::Cache)
                .await
                .expect("served again after the rotation");

            // A rotation to a certificate naming another service is
            // refused and the last one stays.
            let err = server_tls
                .rotate(
                    ca.issue("auth", rt::unix_ms(), VALIDITY),
                    vec![CA.to_owned()],
                )
                .expect_err("a certificate of another service");
            assert!(err.0.contains("names auth, not cache"), "{err}");
            get(Some(&gateway), ServiceKind::Cache)
                .await
                .expect("the last certificate stays");

            // A CA rotation: the server trusts the old and the new CA, so
            // clients of either are served while they move over.
            let next = Ca::new("streamgate-cluster-ca-2");
            server_tls
                .rotate(
                    next.issue("cache", rt::unix_ms(), VALIDITY),
                    vec![CA.to_owned(), "streamgate-cluster-ca-2".to_owned()],
                )
                .expect("rotated");
            let moved = trusting(
                next.issue("api-gateway", rt::unix_ms(), VALIDITY),
                &[CA, "streamgate-cluster-ca-2"],
            );
            get(Some(&moved), ServiceKind::Cache)
                .await
                .expect("a client of the new CA");
            let old = trusting(
                ca.issue("api-gateway", rt::unix_ms(), VALIDITY),
                &[CA, "streamgate-cluster-ca-2"],
            );
            get(Some(&old), ServiceKind::Cache)
                .await
                .expect("a client of the old CA, trusting the new");
        })
        .await
        .expect("client");
}
