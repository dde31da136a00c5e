//! First scenario: a client node calls a cache node's gRPC service through
//! the tonic-generated client and server, prost bytes over madsim's network,
//! with the request-id layer on both sides. Faults (kill + restart, clog)
//! surface as errors and the caller recovers once they heal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::bus::memory::MemoryBus;
use streamgate::client::ClientPool;
use streamgate::kernel::Runtime;
use streamgate::middleware::auth::AttachLayer;
use streamgate::middleware::request_id::RequestIdLayer;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::proto::{CacheGetRequest, CacheSetRequest};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt::{self, transport};
use streamgate::services::ServiceKind;
use streamgate::services::{self, Common, ServiceConfig};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer;

use crate::trace::{announce, note};

const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    9006,
);

fn node_runtime() -> Runtime {
    let registry = Arc::new(MemoryRegistry::new());
    Runtime {
        registry: registry.clone(),
        bus: Arc::new(MemoryBus::new()),
        blobs: Arc::new(streamgate::blob::memory::MemoryBlobStore::new()),
        pool: ClientPool::new(registry, crate::common::pool("cache")),
        keys: crate::common::keys(),
        metrics: Default::default(),
        ready: Default::default(),
    }
}

type Client = CacheServiceClient<
    streamgate::middleware::request_id::RequestId<
        streamgate::middleware::auth::Attach<transport::Channel>,
    >,
>;

async fn set(client: &mut Client, key: &str, value: &[u8]) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(CacheSetRequest {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms: 0,
    });
    req.set_timeout(Duration::from_millis(500));
    client.set(req).await.map(drop)
}

async fn get(client: &mut Client, key: &str) -> Result<Option<Vec<u8>>, tonic::Status> {
    let mut req = tonic::Request::new(CacheGetRequest { key: key.into() });
    req.set_timeout(Duration::from_millis(500));
    let res = client.get(req).await?;
    assert!(
        res.metadata().get("x-request-id").is_some(),
        "server layer echoes the request id"
    );
    let res = res.into_inner();
    Ok(res.found.then_some(res.value))
}

/// Retries `set` until it succeeds; returns the attempts it took.
async fn set_until_ok(
    client: &mut Client,
    key: &str,
    value: &[u8],
    start: std::time::Instant,
) -> u32 {
    for attempt in 1..=100 {
        match set(client, key, value).await {
            Ok(()) => return attempt,
            Err(status) => {
                assert!(
                    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                    "{status}"
                );
                note(
                    start,
                    format_args!("  attempt {attempt}: {:?}", status.code()),
                );
                rt::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("the service did not recover within 100 attempts");
}

#[madsim::test]
async fn call_survives_kill_restart_and_clog() {
    let _progress = announce("call_survives_kill_restart_and_clog");
    let handle = Handle::current();
    let server = handle
        .create_node()
        .name("cache")
        .ip(SERVER.ip())
        .init(|| async {
            let common = Common {
                listen: SERVER,
                ..Common::new(ServiceKind::Cache, SERVER.ip())
            };
            let config = ServiceConfig::new(ServiceKind::Cache);
            let _running = services::start(&config, &common, &node_runtime())
                .await
                .expect("cache starts");
            std::future::pending::<()>().await;
        })
        .build();
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 0, 2].into())
        .build();

    let server_id = server.id();
    client
        .spawn(async move {
            let start = rt::now();
            // Let the server bind before the first call.
            rt::sleep(Duration::from_millis(50)).await;
            let mut cache: Client = CacheServiceClient::new(
                RequestIdLayer.layer(
                    AttachLayer::new(&crate::common::keys(), "client")
                        .layer(transport::channel(SERVER)),
                ),
            );

            let mut health = HealthClient::new(transport::channel(SERVER));
            let status = health
                .check(HealthCheckRequest {
                    service: "streamgate.v1.CacheService".into(),
                })
                .await;
            note(
                start,
                format_args!("health: {:?}", status.as_ref().map(|r| r.get_ref().status)),
            );
            assert_eq!(status.unwrap().into_inner().status, 1, "SERVING");

            let mut anonymous = CacheServiceClient::new(transport::channel(SERVER));
            let refused = anonymous
                .get(CacheGetRequest { key: "a".into() })
                .await
                .unwrap_err();
            assert_eq!(
                refused.code(),
                Code::Unauthenticated,
                "a call without a service token: {refused}"
            );
            note(start, format_args!("no token: {:?}", refused.code()));

            set(&mut cache, "a", b"1").await.expect("healthy set");
            assert_eq!(get(&mut cache, "a").await.unwrap(), Some(b"1".to_vec()));
            note(start, "set/get ok");

            // A server-streaming call (health Watch) over the simulated
            // transport; a clog mid-stream ends it at the deadline.
            let mut watch = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            watch.set_timeout(Duration::from_secs(1));
            let mut updates = health.watch(watch).await.expect("watch opens").into_inner();
            let first = updates
                .message()
                .await
                .expect("first update")
                .expect("stream open");
            assert_eq!(first.status, 1, "SERVING");
            madsim::net::NetSim::current().clog_node(server_id);
            let clogged_at = rt::now();
            let err = updates
                .message()
                .await
                .expect_err("a silent peer ends the stream");
            let waited = rt::now() - clogged_at;
            note(
                start,
                format_args!("watch while clogged: {:?} after {waited:?}", err.code()),
            );
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
            assert!(
                waited <= Duration::from_secs(1),
                "the deadline bounds the wait"
            );
            madsim::net::NetSim::current().unclog_node(server_id);

            let bad = get(&mut cache, "").await.unwrap_err();
            assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
            note(
                start,
                format_args!("bad key: {:?} {}", bad.code(), bad.message()),
            );

            Handle::current().kill(server_id);
            let err = get(&mut cache, "a").await.unwrap_err();
            note(start, format_args!("after kill: {:?}", err.code()));
            assert!(
                matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{err}"
            );

            Handle::current().restart(server_id);
            let attempts = set_until_ok(&mut cache, "b", b"2", start).await;
            note(
                start,
                format_args!("recovered after restart in {attempts} attempt(s)"),
            );
            assert_eq!(
                get(&mut cache, "a").await.unwrap(),
                None,
                "a restart loses the in-memory cache"
            );
            assert_eq!(get(&mut cache, "b").await.unwrap(), Some(b"2".to_vec()));

            madsim::net::NetSim::current().clog_node(server_id);
            let err = get(&mut cache, "b").await.unwrap_err();
            note(start, format_args!("while clogged: {:?}", err.code()));
            // madsim refuses new connections to a clogged node at once; calls
            // already connected would hit their deadline instead.
            assert!(
                matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{err}"
            );

            madsim::net::NetSim::current().unclog_node(server_id);
            let attempts = set_until_ok(&mut cache, "c", b"3", start).await;
            note(
                start,
                format_args!("recovered after unclog in {attempts} attempt(s)"),
            );
            assert_eq!(get(&mut cache, "b").await.unwrap(), Some(b"2".to_vec()));
        })
        .await
        .expect("client task");
}
