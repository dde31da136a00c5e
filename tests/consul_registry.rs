//! The Consul registry backend against the Consul agent model (and against
//! misbehaving fake agents), over real HTTP on tokio (hence not under madsim).
#![cfg(not(madsim))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, put};
use streamgate::registry::consul::{ConsulConfig, ConsulRegistry};
use streamgate::registry::{CheckKind, HealthCheck, Registry, RegistryError};
use streamgate::rt;
use streamgate_testkit::consul_agent::{AgentConfig, ConsulAgent};
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
    })
    .expect("client")
}

#[tokio::test]
async fn consul_registry_meets_the_contract() {
    let (_agent, registry, _) = agent_and_client(fast_agent(), None).await;
    registry_contract::run_all(Arc::new(registry), registry_contract::Options::default()).await;
}

#[tokio::test]
async fn consul_registry_meets_the_contract_with_acl() {
    let config = AgentConfig {
        acl_token: Some("s3cret".into()),
        ..fast_agent()
    };
    let (_agent, registry, _) = agent_and_client(config, Some("s3cret")).await;
    registry_contract::run_all(Arc::new(registry), registry_contract::Options::default()).await;
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
