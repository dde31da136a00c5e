//! The monolith on real tokio and real sockets: every service answers the
//! standard gRPC health check, calls flow through the client pool and the
//! layers, and a graceful stop deregisters everything.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{Kernel, Plugin};
use streamgate::proto::{CacheGetRequest, CacheSetRequest};
use streamgate::registry::Registry;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};
use streamgate_testkit::process::{Process, Signal};
use streamgate_testkit::scratch::Scratch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health(addr: SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    let mut client = HealthClient::new(rt::transport::channel(addr));
    let req = HealthCheckRequest {
        service: service.to_owned(),
    };
    Ok(client.check(req).await?.into_inner().status)
}

async fn start_all(registry: Arc<MemoryRegistry>) -> Kernel {
    let plugins = ServiceKind::ALL
        .iter()
        .map(|&kind| {
            let plugin = ServicePlugin::new(Common::ephemeral(), ServiceConfig::new(kind));
            Box::new(plugin) as Box<dyn Plugin>
        })
        .collect();
    Kernel::start(Arc::new(MemoryBus::new()), registry, plugins)
        .await
        .expect("kernel starts")
}

#[tokio::test]
async fn every_service_serves_health_and_registers() {
    let registry = Arc::new(MemoryRegistry::new());
    let kernel = start_all(registry.clone()).await;
    assert_eq!(kernel.registrations().len(), 9);
    for info in kernel.registrations() {
        let addr = SocketAddr::new(info.address.parse().unwrap(), info.port);
        assert_eq!(
            health(addr, "").await.unwrap(),
            ServingStatus::Serving as i32,
            "{}",
            info.name
        );
        let found = registry.discover(&info.name).await.unwrap();
        assert_eq!(found, vec![info.clone()]);
    }
    let cache = kernel
        .registrations()
        .iter()
        .find(|i| i.name == "cache")
        .unwrap();
    let addr = SocketAddr::new(cache.address.parse().unwrap(), cache.port);
    assert_eq!(
        health(addr, "streamgate.v1.CacheService").await.unwrap(),
        ServingStatus::Serving as i32
    );
    let unknown = health(addr, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let names: Vec<String> = kernel
        .registrations()
        .iter()
        .map(|i| i.name.clone())
        .collect();
    kernel.shutdown().await;
    for name in names {
        assert!(
            registry.discover(&name).await.unwrap().is_empty(),
            "{name} deregistered on stop"
        );
    }
    let refused = health(addr, "").await;
    assert!(refused.is_err(), "a stopped service no longer answers");
}

/// Every service answers `/health` and `/ready` over plain HTTP without a
/// service token (probes carry none): the gateway on its edge server, the
/// others behind the gRPC stack.
#[tokio::test]
async fn every_service_answers_health_and_ready_to_a_plain_probe() {
    use http_body_util::{BodyExt as _, Empty};
    let kernel = start_all(Arc::new(MemoryRegistry::new())).await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    for info in kernel.registrations() {
        for (path, want) in [("/health", "ok\n"), ("/ready", r#"{"status":"ready"}"#)] {
            let uri = format!("http://{}:{}{path}", info.address, info.port);
            let res = http
                .get(uri.parse().expect("a URI"))
                .await
                .unwrap_or_else(|e| panic!("{} {path}: {e}", info.name));
            let status = res.status();
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(
                (status.as_u16(), String::from_utf8_lossy(&body).as_ref()),
                (200, want),
                "{} {path}",
                info.name
            );
        }
    }
    kernel.shutdown().await;
}

#[tokio::test]
async fn cache_calls_go_through_the_pool_and_layers() {
    let kernel = start_all(Arc::new(MemoryRegistry::new())).await;
    let mut cache = kernel.pool().cache().await.unwrap();
    let set = CacheSetRequest {
        key: "video:1".into(),
        value: b"meta".to_vec(),
        ttl_ms: 60_000,
    };
    cache.set(set).await.unwrap();
    let res = cache
        .get(CacheGetRequest {
            key: "video:1".into(),
        })
        .await
        .unwrap();
    // The pool sent `traceparent`: the request id is its trace id, which
    // the caller knows, so a success does not echo it (a failure does,
    // below).
    assert!(
        res.metadata().get("x-request-id").is_none(),
        "{:?}",
        res.metadata()
    );
    let got = res.into_inner();
    assert!(got.found);
    assert_eq!(got.value, b"meta");
    assert!(got.remaining_ttl_ms > 0 && got.remaining_ttl_ms <= 60_000);

    let bad = cache
        .get(CacheGetRequest { key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("key"), "{}", bad.message());
    let request_id = bad
        .metadata()
        .get("x-request-id")
        .expect("a failure names its request id")
        .to_str()
        .unwrap();
    assert_eq!(request_id.len(), 32, "{request_id}");
    let huge = CacheSetRequest {
        key: "k".into(),
        value: vec![0; 2 << 20],
        ttl_ms: 0,
    };
    let err = cache.set(huge).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // The calls show up on the admin listener's /metrics (plain HTTP, no
    // token needed), and no longer on the cache's own port.
    let cache_info = kernel
        .registrations()
        .iter()
        .find(|i| i.name == "cache")
        .unwrap()
        .clone();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let on_cache = format!("http://{}:{}/metrics", cache_info.address, cache_info.port);
    let res = client.get(on_cache.parse().unwrap()).await.unwrap();
    // Not a route there: a gRPC refusal (no service token), no metrics.
    assert!(res.headers().contains_key("grpc-status"), "{res:?}");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        body.is_empty(),
        "/metrics is off the service ports: {body:?}"
    );
    let admin = streamgate::services::host::serve_admin(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        kernel.runtime(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/metrics", admin.local_addr());
    let res = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    for expected in [
        r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Get",code="Ok"} 1"#,
        r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Get",code="InvalidArgument"} 1"#,
        r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Set",code="Ok"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    kernel.shutdown().await;
    admin.stop().await;
}

/// The README's run command: the real binary answers health on every
/// service's port (each a free one, `--port 0`, as its `listening` lines
/// say), and stops cleanly on SIGTERM.
#[tokio::test]
async fn binary_serves_every_port_and_stops_on_sigterm() {
    let scratch = Scratch::new("monolith-bin");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_streamgate"));
    cmd.args(["monolith", "--port", "0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .env("RUST_LOG", "warn");
    let mut child = Process::spawn("monolith", cmd, scratch.path());
    let mut addrs = Vec::new();
    for kind in ServiceKind::ALL {
        let addr = child.listening(kind.name()).await;
        assert_eq!(
            health(addr, "").await.ok(),
            Some(ServingStatus::Serving as i32),
            "{kind} on {addr}"
        );
        addrs.push(addr);
    }
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 9, "nine ports: {addrs:?}");
    child.signal(Signal::TERM);
    let exit = child.exited(Duration::from_secs(15)).await;
    assert!(exit.success(), "graceful exit, got {exit}");
}
