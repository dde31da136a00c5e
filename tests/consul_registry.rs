//! The Consul registry backend against the Consul agent model (and against
//! misbehaving fake agents), over real HTTP on tokio (hence not under madsim).
#![cfg(not(madsim))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, put};
use streamgate::bus::memory::MemoryBus;
use streamgate::client::PoolConfig;
use streamgate::kernel::{Kernel, KernelError, Plugin, Runtime, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::registry::consul::{ConsulConfig, ConsulRegistry, HyperTransport};
use streamgate::registry::{CheckKind, HealthCheck, Registry, RegistryError};
use streamgate::rt;
use streamgate_testkit::consul_agent::{AgentConfig, ConsulAgent, set_status_over_http};
use streamgate_testkit::registry_contract::{self, instance, unique_name};

/// Serves `app` on an ephemeral loopback port; returns its base URL.
async fn serve_router(app: Router) -> String {
    // Tests serve on real tokio sockets; the runtime seam is for service code.
    #[allow(clippy::disallowed_methods)]
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    rt::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    format!("http://{addr}")
}

fn fast_agent() -> AgentConfig {
    AgentConfig {
        reap_interval: Duration::from_millis(100),
        ..AgentConfig::default()
    }
}

async fn agent_and_client(
    config: AgentConfig,
    token: Option<&str>,
) -> (Arc<ConsulAgent>, ConsulRegistry, String) {
    let agent = ConsulAgent::new(config);
    let url = serve_router(agent.router()).await;
    (agent, client(&url, token), url)
}

fn client(url: &str, token: Option<&str>) -> ConsulRegistry {
    ConsulRegistry::connect(&ConsulConfig {
        address: url.to_owned(),
        token: token.map(str::to_owned),
        request_timeout: Duration::from_secs(2),
        ..ConsulConfig::default()
    })
    .expect("client")
}

/// The contract's options against the agent at `url`: warnings and
/// failures are set through Consul's own check update endpoints.
fn contract(url: &str, token: Option<&str>) -> registry_contract::Options {
    registry_contract::Options::with_status(set_status_over_http(
        url.to_owned(),
        token.map(str::to_owned),
        Arc::new(HyperTransport::new()),
    ))
}

#[tokio::test]
async fn consul_registry_meets_the_contract() {
    let (_agent, registry, url) = agent_and_client(fast_agent(), None).await;
    registry_contract::run_all(Arc::new(registry), contract(&url, None)).await;
}

#[tokio::test]
async fn consul_registry_meets_the_contract_with_acl() {
    let config = AgentConfig {
        acl_token: Some("s3cret".into()),
        ..fast_agent()
    };
    let (_agent, registry, url) = agent_and_client(config, Some("s3cret")).await;
    registry_contract::run_all(Arc::new(registry), contract(&url, Some("s3cret"))).await;
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn register_body_uses_consul_field_names() {
    let (agent, registry, _) = agent_and_client(fast_agent(), None).await;
    let name = unique_name("fields");
    let mut ttl = instance(&name, 8001, Duration::from_secs(1));
    ttl.check.deregister_critical_after = Duration::from_secs(5);
    registry.register(&ttl).await.expect("register ttl");
    let http = streamgate::registry::ServiceInfo {
        id: format!("{name}-http"),
        check: HealthCheck {
            kind: CheckKind::Http {
                url: "http://127.0.0.1:8002/health".into(),
            },
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(1500),
            deregister_critical_after: Duration::from_secs(90),
        },
        ..ttl.clone()
    };
    registry.register(&http).await.expect("register http");

    let bodies = agent.register_bodies();
    assert_eq!(bodies.len(), 2);
    let (b, h) = (&bodies[0], &bodies[1]);
    assert_eq!(
        keys(b),
        ["Address", "Check", "ID", "Meta", "Name", "Port", "Tags"]
    );
    assert_eq!(b["ID"], ttl.id.as_str());
    assert_eq!(b["Name"], name.as_str());
    assert_eq!(b["Port"], 8001);
    assert_eq!(b["Tags"], serde_json::json!(["v1", "contract"]));
    assert_eq!(b["Meta"]["zone"], "a");
    assert!(b["Meta"]["streamgate_check"].is_string());
    assert_eq!(
        keys(&b["Check"]),
        [
            "CheckID",
            "DeregisterCriticalServiceAfter",
            "Name",
            "Status",
            "TTL"
        ]
    );
    assert_eq!(b["Check"]["CheckID"], format!("service:{}", ttl.id));
    assert_eq!(
        b["Check"]["Status"], "passing",
        "else Consul starts it critical"
    );
    assert_eq!(b["Check"]["TTL"], "2s", "interval + timeout");
    assert_eq!(
        b["Check"]["DeregisterCriticalServiceAfter"], "60s",
        "clamped up to Consul's 1m minimum"
    );
    assert_eq!(
        keys(&h["Check"]),
        [
            "CheckID",
            "DeregisterCriticalServiceAfter",
            "HTTP",
            "Interval",
            "Name",
            "Status",
            "Timeout"
        ]
    );
    assert_eq!(h["Check"]["HTTP"], "http://127.0.0.1:8002/health");
    assert_eq!(h["Check"]["Interval"], "10s");
    assert_eq!(h["Check"]["Timeout"], "1500ms");
    assert_eq!(h["Check"]["DeregisterCriticalServiceAfter"], "90s");

    // The check config survives discovery (carried in Meta, stripped on the way out).
    let mut found = registry.discover(&name).await.expect("discover");
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(found, vec![ttl, http]);
}

#[tokio::test]
async fn acl_token_is_required() {
    let config = AgentConfig {
        acl_token: Some("right".into()),
        ..fast_agent()
    };
    let (_agent, good, url) = agent_and_client(config, Some("right")).await;
    let name = unique_name("acl");
    let a = instance(&name, 8101, Duration::from_secs(5));
    good.register(&a).await.expect("right token registers");
    good.heartbeat(&a.id).await.expect("right token heartbeats");
    assert_eq!(
        good.discover(&name).await.expect("discover"),
        vec![a.clone()]
    );

    for (who, bad) in [
        ("missing", client(&url, None)),
        ("wrong", client(&url, Some("wrong"))),
    ] {
        let unavailable = |r: Result<(), RegistryError>, op: &str| match r {
            Err(RegistryError::Unavailable(m)) => assert!(m.contains("403"), "{who} {op}: {m}"),
            other => panic!("{who} token, {op}: {other:?}"),
        };
        unavailable(bad.register(&a).await, "register");
        unavailable(bad.heartbeat(&a.id).await, "heartbeat (not NotFound!)");
        unavailable(bad.deregister(&a.id).await, "deregister");
        let err = bad.discover(&name).await.expect_err("discover");
        assert!(
            matches!(err, RegistryError::Unavailable(_)),
            "{who}: discover: {err}"
        );
        bad.health().await.expect("status/leader needs no token");
    }
    assert_eq!(
        good.discover(&name).await.expect("discover"),
        vec![a],
        "nothing changed"
    );
}

#[tokio::test]
async fn agent_data_loss_is_reported_and_repaired() {
    let (agent, registry, _) = agent_and_client(fast_agent(), None).await;
    let name = unique_name("wipe");
    let a = instance(&name, 8201, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    for port in 8202..8210 {
        let filler = instance(&unique_name("filler"), port, Duration::from_secs(5));
        registry.register(&filler).await.expect("register filler");
    }
    registry.heartbeat(&a.id).await.expect("heartbeat");
    let before = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert!(before.index > 2);

    agent.wipe();
    let err = registry.heartbeat(&a.id).await.expect_err("lost");
    assert_eq!(err, RegistryError::NotFound(a.id.clone()));
    let started = rt::now();
    let after = registry
        .watch(&name, before.index, Duration::from_secs(5))
        .await
        .expect("watch after wipe");
    assert!(
        rt::now() - started < Duration::from_secs(1),
        "answers at once"
    );
    assert!(after.index < before.index, "the index went backwards");
    assert!(after.index >= 1);
    assert!(after.instances.is_empty());

    registry.register(&a).await.expect("register again");
    registry
        .heartbeat(&a.id)
        .await
        .expect("heartbeat after re-register");
    assert_eq!(registry.discover(&name).await.expect("discover"), vec![a]);
}

#[tokio::test]
async fn blocking_query_waits_for_a_change_or_the_wait() {
    let (_agent, registry, _) = agent_and_client(fast_agent(), None).await;
    let registry = Arc::new(registry);
    let name = unique_name("block");
    let empty = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert!(empty.index >= 1, "index >= 1 even on a fresh agent");
    assert!(empty.instances.is_empty());

    // Quiet: returns after about `wait`, same index; other services do not wake it.
    let other = instance(&unique_name("other"), 8301, Duration::from_secs(5));
    let reg = registry.clone();
    let noise = rt::spawn(async move {
        rt::sleep(Duration::from_millis(100)).await;
        reg.register(&other).await.expect("register other");
    });
    let t = rt::now();
    let quiet = registry
        .watch(&name, empty.index, Duration::from_millis(400))
        .await
        .expect("quiet watch");
    let waited = rt::now() - t;
    assert!(
        waited >= Duration::from_millis(380) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(quiet.instances.is_empty());
    noise.await.expect("noise");

    // A change wakes it early with a larger index.
    let a = instance(&name, 8302, Duration::from_secs(5));
    let (reg, a2) = (registry.clone(), a.clone());
    let adder = rt::spawn(async move {
        rt::sleep(Duration::from_millis(200)).await;
        reg.register(&a2).await.expect("register");
    });
    let t = rt::now();
    let changed = registry
        .watch(&name, quiet.index, Duration::from_secs(10))
        .await
        .expect("blocking watch");
    let waited = rt::now() - t;
    assert!(
        waited >= Duration::from_millis(180) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(changed.index > quiet.index);
    assert_eq!(changed.instances, vec![a.clone()]);
    adder.await.expect("adder");

    // A TTL expiry is a change too: the watch wakes when the check turns critical.
    let short = instance(&name, 8303, Duration::from_millis(200));
    registry.register(&short).await.expect("register short");
    let w = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert_eq!(w.instances.len(), 2);
    let expired = registry
        .watch(&name, w.index, Duration::from_secs(5))
        .await
        .expect("watch expiry");
    assert_eq!(expired.instances, vec![a], "critical after its TTL");
}

async fn fake(app: Router) -> ConsulRegistry {
    let url = serve_router(app).await;
    ConsulRegistry::connect(&ConsulConfig {
        address: url,
        token: None,
        request_timeout: Duration::from_millis(500),
        ..ConsulConfig::default()
    })
    .expect("client")
}

fn index_header(i: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-consul-index", HeaderValue::from(i));
    h
}

fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, RegistryError>, what: &str) {
    match r {
        Err(RegistryError::Unavailable(m)) => assert!(!m.is_empty(), "{what}"),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    let garbage = fake(
        Router::new()
            .route(
                "/v1/health/service/{name}",
                get(|| async { (index_header(5), "[{\"Service\": 42}") }),
            )
            .route("/v1/status/leader", get(|| async { "not json" })),
    )
    .await;
    assert_unavailable(garbage.discover("x").await, "garbage JSON");
    assert_unavailable(garbage.health().await, "garbage leader");

    let no_index =
        fake(Router::new().route("/v1/health/service/{name}", get(|| async { "[]" }))).await;
    assert_unavailable(no_index.discover("x").await, "missing X-Consul-Index");

    let huge = fake(Router::new().route(
        "/v1/health/service/{name}",
        get(|| async { (index_header(5), vec![b' '; 5 << 20]) }),
    ))
    .await;
    assert_unavailable(huge.discover("x").await, "body over 4 MiB");

    let broken = fake(
        Router::new()
            .route(
                "/v1/health/service/{name}",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route(
                "/v1/status/leader",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route(
                "/v1/agent/service/register",
                put(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route(
                "/v1/agent/service/deregister/{id}",
                put(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            ),
    )
    .await;
    assert_unavailable(broken.discover("x").await, "500 on health");
    assert_unavailable(broken.health().await, "500 on leader");
    assert_unavailable(
        broken
            .register(&instance("x", 1, Duration::from_secs(1)))
            .await,
        "500 on register",
    );
    assert_unavailable(broken.deregister("x-1").await, "500 on deregister");

    let no_leader = fake(Router::new().route("/v1/status/leader", get(|| async { "\"\"" }))).await;
    assert_unavailable(no_leader.health().await, "empty leader");

    let silent = fake(Router::new().route(
        "/v1/status/leader",
        get(|| async { futures::future::pending::<&'static str>().await }),
    ))
    .await;
    let t = rt::now();
    assert_unavailable(silent.health().await, "no answer");
    assert!(rt::now() - t < Duration::from_secs(2), "time-limited");

    let nothing = client("http://127.0.0.1:1", None);
    assert_unavailable(nothing.health().await, "connection refused");
}

#[tokio::test]
async fn index_is_kept_at_least_one_and_returned_when_backwards() {
    let backwards = fake(Router::new().route(
        "/v1/health/service/{name}",
        get(|| async { (index_header(3), "[]") }),
    ))
    .await;
    let r = backwards
        .watch("x", 10, Duration::from_millis(100))
        .await
        .expect("watch");
    assert_eq!(r.index, 3, "returned as is; the caller resets");
    let zero = fake(Router::new().route(
        "/v1/health/service/{name}",
        get(|| async { (index_header(0), "[]") }),
    ))
    .await;
    let r = zero.watch("x", 0, Duration::ZERO).await.expect("watch");
    assert_eq!(r.index, 1);
}

#[tokio::test]
async fn heartbeat_404_is_lost_500_is_a_failed_heartbeat() {
    let (agent, registry, _) = agent_and_client(fast_agent(), None).await;
    let name = unique_name("codes");
    let a = instance(&name, 8401, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    // 404 (unknown check): lost, register again.
    assert_eq!(
        registry.heartbeat("ghost-1").await,
        Err(RegistryError::NotFound("ghost-1".into()))
    );
    assert_eq!(
        registry.confirm("ghost-1").await,
        Err(RegistryError::NotFound("ghost-1".into()))
    );
    // 500 (Consul could not persist the check's state): the registration
    // is there, the heartbeat failed.
    agent.fail_check_updates(Some(500));
    match registry.heartbeat(&a.id).await {
        Err(RegistryError::Unavailable(m)) => assert!(m.contains("500"), "{m}"),
        other => panic!("a 500 is a failed heartbeat, not a lost registration: {other:?}"),
    }
    registry.confirm(&a.id).await.expect("still registered");
    agent.fail_check_updates(None);
    registry.heartbeat(&a.id).await.expect("heartbeats again");
    // 500 for a check that is no TTL check: failed too, not lost.
    let mut probed = a.clone();
    probed.check = HealthCheck::grpc("127.0.0.1:8401".into(), Duration::from_secs(2));
    registry
        .register(&probed)
        .await
        .expect("re-register with a gRPC check");
    match registry.heartbeat(&a.id).await {
        Err(RegistryError::Unavailable(m)) => assert!(m.contains("TTL"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A plugin that serves nothing and registers `info` (the kernel's
/// keep-alive is what is under test).
struct Registered(streamgate::registry::ServiceInfo);

#[async_trait::async_trait]
impl Plugin for Registered {
    fn name(&self) -> &str {
        "registered"
    }
    async fn init(&mut self, _: &Runtime) -> Result<(), KernelError> {
        Ok(())
    }
    async fn start(&mut self, _: &Runtime) -> Result<(), KernelError> {
        Ok(())
    }
    fn registration(&self) -> Option<streamgate::registry::ServiceInfo> {
        Some(self.0.clone())
    }
    async fn stop(&mut self) -> Result<(), KernelError> {
        Ok(())
    }
}

/// A kernel registering `plugins` with the agent at `url`, its Consul
/// client as in production (10 s request timeout).
async fn kernel_on(url: &str, plugins: Vec<Box<dyn Plugin>>) -> Kernel {
    let consul = ConsulRegistry::connect(&ConsulConfig {
        address: url.to_owned(),
        ..ConsulConfig::default()
    })
    .expect("client");
    let seams = Seams::new(Arc::new(MemoryBus::new()), Arc::new(consul));
    Kernel::start_with(
        seams,
        PoolConfig::new(Keyring::generate("t"), "test"),
        plugins,
    )
    .await
    .expect("kernel starts")
}

/// Polls `cond` every 50 ms for at most `bound`; how long it took.
async fn within(bound: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) -> Duration {
    let started = rt::now();
    while !cond().await {
        assert!(rt::now() - started < bound, "{what} within {bound:?}");
        rt::sleep(Duration::from_millis(50)).await;
    }
    rt::now() - started
}

#[tokio::test]
async fn the_kernel_retries_failed_heartbeats_and_re_registers_only_lost_ones() {
    let (agent, registry, url) = agent_and_client(fast_agent(), None).await;
    let name = unique_name("keep");
    let a = instance(&name, 8501, Duration::from_secs(2));
    let kernel = kernel_on(&url, vec![Box::new(Registered(a.clone()))]).await;
    assert_eq!(agent.register_bodies().len(), 1);
    // Every heartbeat answered 500 for 5 s: retried with backoff, never
    // answered by registering again (the old client re-registered every
    // second); after a few failures the kernel confirms the registration
    // is there.
    agent.fail_check_updates(Some(500));
    let before = agent.check_updates();
    rt::sleep(Duration::from_secs(5)).await;
    let tried = agent.check_updates() - before;
    assert!((2..=5).contains(&tried), "{tried} heartbeats in 5 s");
    assert_eq!(
        agent.register_bodies().len(),
        1,
        "no re-registration on 500s"
    );
    agent.fail_check_updates(None);
    within(Duration::from_secs(4), "passing again", async || {
        registry.discover(&name).await.expect("discover") == vec![a.clone()]
    })
    .await;
    // A 404 (the agent lost it): registered again at the next heartbeat.
    agent.wipe();
    within(
        Duration::from_secs(3),
        "re-registered after a wipe",
        async || registry.discover(&name).await.expect("discover") == vec![a.clone()],
    )
    .await;
    assert_eq!(agent.register_bodies().len(), 2);
    kernel.shutdown().await;
}

#[tokio::test]
async fn a_hung_agent_holds_a_heartbeat_half_a_ttl_at_most() {
    let (agent, registry, url) = agent_and_client(fast_agent(), None).await;
    let name = unique_name("hung");
    // TTL window 4 s: each heartbeat is cut after 2 s.
    let a = instance(&name, 8601, Duration::from_secs(2));
    let kernel = kernel_on(&url, vec![Box::new(Registered(a.clone()))]).await;
    agent.hang_check_updates(true);
    let before = agent.check_updates();
    within(
        Duration::from_secs(6),
        "critical without heartbeats",
        async || registry.discover(&name).await.expect("discover").is_empty(),
    )
    .await;
    rt::sleep(Duration::from_secs(1)).await;
    let tried = agent.check_updates() - before;
    assert!(
        tried >= 2,
        "a heartbeat waits 2 s, not the 10 s request timeout ({tried} tried)"
    );
    // Answering again, the agent sees a heartbeat well within one TTL.
    agent.hang_check_updates(false);
    let took = within(Duration::from_secs(4), "passing again", async || {
        registry.discover(&name).await.expect("discover") == vec![a.clone()]
    })
    .await;
    assert!(took < Duration::from_secs(4), "{took:?}");
    kernel.shutdown().await;
}

#[tokio::test]
async fn grpc_and_http_checks_are_registered_for_consul_to_run() {
    use streamgate::registry::CheckStyle;
    use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
    use streamgate_testkit::consul_agent::CheckType;

    let (agent, registry, url) = agent_and_client(fast_agent(), None).await;
    for (style, kind) in [
        (CheckStyle::Grpc, CheckType::Grpc),
        (CheckStyle::Http, CheckType::Http),
    ] {
        let common = Common {
            check: style,
            ..Common::ephemeral()
        };
        let plugin = ServicePlugin::new(common, ServiceConfig::new(ServiceKind::Cache));
        let kernel = kernel_on(&url, vec![Box::new(plugin)]).await;
        let info = kernel.registrations()[0].clone();
        let body = agent.register_bodies().pop().expect("registered");
        let check = &body["Check"];
        let addr = format!("127.0.0.1:{}", info.port);
        match style {
            CheckStyle::Grpc => {
                assert_eq!(check["GRPC"], addr.as_str());
                assert_eq!(check["GRPCUseTLS"], false);
            }
            _ => assert_eq!(check["HTTP"], format!("http://{addr}/health").as_str()),
        }
        assert_eq!(check["Interval"], "2s");
        assert_eq!(check["Timeout"], "1s");
        assert_eq!(check["DeregisterCriticalServiceAfter"], "60s");
        assert!(check.get("TTL").is_none(), "{check}");
        assert_eq!(
            agent
                .check_kind(&format!("service:{}", info.id))
                .map(|k| k.0),
            Some(kind)
        );
        // What Consul would probe answers: the gRPC health service, /health.
        match style {
            CheckStyle::Grpc => {
                let channel = streamgate::rt::transport::channel(addr.parse().expect("addr"));
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let res = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .expect("health answers");
                assert_eq!(res.get_ref().status, 1, "SERVING");
            }
            _ => {
                use streamgate::registry::consul::HttpTransport as _;
                let req = http::Request::get(format!("http://{addr}/health"))
                    .body(bytes::Bytes::new())
                    .expect("request");
                let res = HyperTransport::new()
                    .send(req, 1024)
                    .await
                    .expect("/health answers");
                assert_eq!(res.status(), 200);
            }
        }
        // No heartbeats for a check Consul runs itself.
        let before = agent.check_updates();
        rt::sleep(Duration::from_millis(2500)).await;
        assert_eq!(agent.check_updates(), before, "no TTL heartbeats");
        assert_eq!(
            registry.discover("cache").await.expect("discover"),
            vec![info.clone()]
        );
        // A lost registration is still noticed (GET agent/service: 404).
        agent.wipe();
        within(Duration::from_secs(3), "re-registered", async || {
            registry.discover("cache").await.expect("discover") == vec![info.clone()]
        })
        .await;
        kernel.shutdown().await;
    }
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `cache` process on a free port (`--port 0`), with its registry and
/// NATS where `args` say, under the tests' process guard (its output kept in
/// `dir`, printed if the test fails; killed when dropped).
fn cache(dir: &std::path::Path, args: &[&str]) -> Process {
    let keys = dir.join("service.keys");
    std::fs::write(&keys, format!("k1 {}\n", "cd".repeat(32))).expect("key file");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cache"));
    cmd.args(["--port", "0"])
        .arg("--allow-plaintext")
        .arg("--service-key-file")
        .arg(&keys)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("STREAMGATE_LOG_FORMAT", "text");
    Process::spawn("cache", cmd, dir)
}

use streamgate::services::ServiceKind;
use streamgate_testkit::process::{Process, Signal};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_its_registry_waits_for_it() {
    let dir = tempfile::tempdir().expect("dir");
    let agent_port = free_port();
    let consul_addr = format!("http://127.0.0.1:{agent_port}");
    let mut proc = cache(
        dir.path(),
        &[
            "--nats-url",
            &streamgate_testkit::nats_url(),
            "--registry",
            "consul",
            "--consul-addr",
            &consul_addr,
            "--startup-timeout",
            "30s",
        ],
    );
    // The agent comes up 2 s after the service.
    rt::sleep(Duration::from_secs(2)).await;
    assert!(proc.try_exit().is_none(), "the service waits");
    let agent = ConsulAgent::new(fast_agent());
    #[allow(clippy::disallowed_methods)]
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", agent_port))
        .await
        .expect("the reserved port");
    let app = agent.router();
    rt::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    let port = proc.listening("cache").await.port();
    let registry = client(&consul_addr, None);
    let took = within(
        Duration::from_secs(15),
        "the service registers",
        async || {
            registry
                .discover("cache")
                .await
                .is_ok_and(|found| found.iter().any(|i| i.port == port))
        },
    )
    .await;
    assert!(proc.try_exit().is_none(), "and runs ({took:?})");
    let log = proc.log();
    assert!(
        log.contains("not reachable yet") && log.contains(&consul_addr),
        "each failed attempt is logged: {log}"
    );
    proc.signal(Signal::TERM);
    assert_eq!(proc.exited(Duration::from_secs(15)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gives_up_with_code_2_naming_what_it_waited_for() {
    let nowhere = format!("127.0.0.1:{}", free_port());
    let nats = format!("nats://{nowhere}");
    let consul = format!("http://{nowhere}");
    let real_nats = streamgate_testkit::nats_url();
    for (args, named) in [
        (vec!["--nats-url", &nats], format!("NATS at {nats}")),
        (
            vec![
                "--nats-url",
                &real_nats,
                "--registry",
                "consul",
                "--consul-addr",
                &consul,
            ],
            format!("Consul agent at {consul}"),
        ),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let mut args = args.clone();
        args.extend(["--startup-timeout", "2s"]);
        let started = rt::now();
        let mut proc = cache(dir.path(), &args);
        assert_eq!(
            proc.exited(Duration::from_secs(15)).await.code(),
            Some(2),
            "{named}"
        );
        let waited = rt::now() - started;
        assert!(waited >= Duration::from_secs(2), "it waited ({waited:?})");
        let log = proc.log();
        assert!(log.contains(&named), "the error names {named}: {log}");
        assert!(log.contains("not reachable after waiting"), "{log}");
    }
}

#[tokio::test]
async fn the_monitor_follows_services_by_blocking_queries() {
    use streamgate::services::{Common, ServiceConfig, ServicePlugin};

    let (agent, _registry, url) = agent_and_client(fast_agent(), None).await;
    let cache = ServicePlugin::new(Common::ephemeral(), ServiceConfig::new(ServiceKind::Cache));
    let monitor = ServicePlugin::new(
        Common::ephemeral(),
        ServiceConfig::new(ServiceKind::Monitor),
    );
    let kernel = kernel_on(&url, vec![Box::new(cache), Box::new(monitor)]).await;
    let (plain_before, _) = agent.health_queries();
    // Three probe rounds (2 s apart): one watch per followed service; the
    // old loop made a plain query per service per round (9 x 3).
    rt::sleep(Duration::from_millis(6500)).await;
    let (plain, blocking) = agent.health_queries();
    let plain = plain - plain_before;
    assert!(plain <= 9, "{plain} non-blocking health queries");
    assert!(
        blocking >= 9,
        "{blocking} blocking queries: one per service at least"
    );
    // And the rounds see what the watches see: the cache is SERVING.
    let status = kernel
        .pool()
        .monitor()
        .await
        .expect("monitor client")
        .get_status(streamgate::proto::GetStatusRequest::default())
        .await
        .expect("status")
        .into_inner();
    let cache = status
        .services
        .iter()
        .find(|s| s.name == "cache")
        .expect("the cache is followed");
    assert_eq!(
        cache.health,
        streamgate::proto::ServiceHealth::Serving as i32,
        "{cache:?}"
    );
    kernel.shutdown().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in `dir` (`ca.pem`, `server.pem`, `server-key.pem`,
/// `client.pem`, `client-key.pem`).
fn tls_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        dir.join("ca.pem"),
        ca.self_signed(&ca_key).expect("ca").pem(),
    )
    .expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    for (name, san) in [
        (
            "server",
            SanType::IpAddress("127.0.0.1".parse().expect("ip")),
        ),
        (
            "client",
            SanType::DnsName("client".try_into().expect("name")),
        ),
    ] {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let cert = params.signed_by(&key, &issuer).expect("signed");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("cert");
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("key");
    }
}

/// Serves `app` over HTTPS with `dir`'s server certificate, requiring a
/// client certificate of `dir`'s CA (as an agent with `verify_incoming`);
/// returns its base URL.
async fn serve_router_tls(app: Router, dir: &std::path::Path) -> String {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca"))
        .expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem")).expect("cert")];
    let key = PrivateKeyDer::from_pem_file(dir.join("server-key.pem")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    #[allow(clippy::disallowed_methods)]
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    rt::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            rt::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(
                    hyper_util::rt::TokioIo::new(tls),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
            });
        }
    });
    format!("https://127.0.0.1:{}", addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_over_https_with_a_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    tls_files(dir.path());
    let agent = ConsulAgent::new(fast_agent());
    let url = serve_router_tls(agent.router(), dir.path()).await;
    let tls = |ca: bool, client: bool| streamgate::registry::consul::ConsulTls {
        ca: ca.then(|| dir.path().join("ca.pem")),
        cert: client.then(|| dir.path().join("client.pem")),
        key: client.then(|| dir.path().join("client-key.pem")),
    };
    let registry = |tls| {
        ConsulRegistry::connect(&ConsulConfig {
            address: url.clone(),
            tls,
            request_timeout: Duration::from_secs(2),
            ..ConsulConfig::default()
        })
        .expect("client")
    };

    // The CA and a client certificate: it works like plain HTTP.
    let good = registry(tls(true, true));
    good.health().await.expect("the agent answers over TLS");
    let name = unique_name("tls");
    good.register(&instance(&name, 7001, Duration::from_secs(30)))
        .await
        .expect("register over TLS");
    assert_eq!(good.discover(&name).await.expect("discover").len(), 1);

    // Not trusting the agent's CA (the system's CAs), or no client
    // certificate: refused, and the error says TLS.
    for (what, settings) in [
        ("the system's CAs", tls(false, true)),
        ("no client certificate", tls(true, false)),
    ] {
        let err = registry(settings).health().await.expect_err(what);
        assert!(
            matches!(err, RegistryError::Unavailable(_)),
            "{what}: {err:?}"
        );
    }

    // A file that does not load is refused when the client is made.
    let broken = ConsulRegistry::connect(&ConsulConfig {
        address: url.clone(),
        tls: streamgate::registry::consul::ConsulTls {
            ca: Some(dir.path().join("missing.pem")),
            ..Default::default()
        },
        ..ConsulConfig::default()
    })
    .expect_err("a missing CA file");
    assert!(broken.to_string().contains("missing.pem"), "{broken}");

    // A service binary with the same options registers over TLS.
    let path = |f: &str| dir.path().join(f).to_str().expect("utf-8").to_owned();
    let mut proc = cache(
        dir.path(),
        &[
            "--nats-url",
            &streamgate_testkit::nats_url(),
            "--registry",
            "consul",
            "--consul-addr",
            &url,
            "--consul-ca",
            &path("ca.pem"),
            "--consul-cert",
            &path("client.pem"),
            "--consul-key",
            &path("client-key.pem"),
        ],
    );
    proc.listening("cache").await;
    let started = rt::now();
    while good.discover("cache").await.map_or(0, |f| f.len()) == 0 {
        assert!(
            rt::now() - started < Duration::from_secs(10),
            "the cache registered over TLS"
        );
        rt::sleep(Duration::from_millis(100)).await;
    }
}
