//! Hosting one service: the settings every instance has ([`Common`]),
//! what a service hands over to be served ([`Domain`]), and [`serve`],
//! which binds, serves the domain behind the server layer stack and hands
//! back a [`RunningService`] to stop.
//!
//! Every service serves, on its port: its gRPC services, the standard
//! `grpc.health.v1.Health` service, gRPC server reflection
//! ([`super::reflection`]; not under the simulator), and HTTP `GET /health` (liveness) and
//! `/ready` (readiness). Each process also has one admin listener
//! ([`serve_admin`]): `/metrics`, `/health` and `/ready` for the whole
//! process, off the public and service ports.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::{IntoResponse as _, Response};

use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

use super::{ServiceKind, gateway};
use crate::bus::Subscription;
use crate::kernel::{KernelError, ReadyChecks, Runtime};
use crate::middleware::metrics::HttpMetricsLayer;
use crate::middleware::stack::{self, Deadlines};
use crate::registry::{CheckStyle, ServiceInfo};
use crate::rt::transport::EdgeLimits;
use crate::rt::{self, transport};

/// What every service instance is given besides its own [`Config`]:
/// where it listens, how it registers, where its files live.
///
/// [`Config`]: super::ServiceConfig
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address other services reach it at (default: the listen IP, or
    /// 127.0.0.1 when listening on all interfaces).
    pub advertise: Option<IpAddr>,
    /// Heartbeat TTL interval of its registration (or how often the
    /// registry probes it, for a gRPC or HTTP check).
    pub check_interval: Duration,
    /// The check it registers with.
    pub check: CheckStyle,
    /// Per calling service: calls in a burst, and calls per second.
    pub rate_limit: (u32, f64),
    /// Where the service keeps its files (SQLite databases, work files);
    /// `None` keeps them in memory (tests, the simulator).
    pub data_dir: Option<PathBuf>,
}

impl Common {
    /// Defaults for `kind` on `host`, at its default port.
    #[must_use]
    pub fn new(kind: ServiceKind, host: IpAddr) -> Self {
        Self {
            listen: SocketAddr::new(host, kind.default_port()),
            advertise: None,
            check_interval: Duration::from_secs(2),
            check: CheckStyle::Ttl,
            rate_limit: RATE_LIMIT,
            data_dir: None,
        }
    }

    /// Defaults, listening on a free port of 127.0.0.1 (tests, benches).
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            check_interval: Duration::from_secs(2),
            check: CheckStyle::Ttl,
            rate_limit: RATE_LIMIT,
            data_dir: None,
        }
    }

    /// Where the service keeps its database `file`: under the data dir
    /// (created if missing), or `None` to keep it in memory.
    ///
    /// # Errors
    /// The data dir cannot be created.
    pub fn db_path(&self, file: &str) -> Result<Option<PathBuf>, DataDirError> {
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|source| DataDirError {
            path: dir.clone(),
            source,
        })?;
        Ok(Some(dir.join(file)))
    }
}

/// The data dir could not be created.
#[derive(Debug, thiserror::Error)]
#[error("data dir {}", .path.display())]
pub struct DataDirError {
    /// The dir.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Calls each calling service may burst, and make per second on average, by
/// default (every instance of a calling service shares its caller identity).
pub const RATE_LIMIT: (u32, f64) = (10_000, 20_000.0);

/// How long a stopping service waits for open calls and connections.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A service that is serving; [`RunningService::stop`] drains and stops it.
#[derive(Debug)]
pub struct RunningService {
    info: ServiceInfo,
    local_addr: SocketAddr,
    health: HealthReporter,
    grpc_names: Vec<&'static str>,
    shutdown: Option<oneshot::Sender<()>>,
    task: rt::JoinHandle<Result<(), transport::TransportError>>,
    background: Background,
    /// Set once stopping: `/ready` answers 503 from then on.
    draining: Arc<AtomicBool>,
    /// Keeps the gRPC health status in step with the dependencies until
    /// the service stops serving.
    health_follower: rt::JoinHandle<()>,
}

/// A service's work besides answering calls: event consumers and loops.
/// Stopped after the server has drained.
#[derive(Default)]
pub struct Background {
    /// Event subscriptions (ended by dropping them).
    pub subscriptions: Vec<Subscription>,
    /// Background tasks (aborted).
    pub tasks: Vec<rt::JoinHandle<()>>,
    /// Run after the tasks are aborted, each for at most [`STOP_TIMEOUT`]
    /// (e.g. the worker gives back the jobs it held).
    pub on_stop: Vec<StopStep>,
}

/// A step of [`Background::on_stop`]: makes the future to run.
pub type StopStep = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Longest an [`Background::on_stop`] step may take.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("subscriptions", &self.subscriptions)
            .field("tasks", &self.tasks)
            .field("on_stop", &self.on_stop.len())
            .finish()
    }
}

impl Background {
    async fn stop(&mut self) {
        self.subscriptions.clear();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for step in self.on_stop.drain(..) {
            if rt::timeout(STOP_TIMEOUT, step()).await.is_err() {
                tracing::warn!("a stop step timed out");
            }
        }
    }
}

/// What a service's module hands to [`start`].
#[derive(Default)]
pub struct Domain {
    /// Its gRPC services.
    pub routes: Routes,
    /// Their names, reported by the health service.
    pub grpc_names: Vec<&'static str>,
    /// Public HTTP routes (the gateway's API): served beside the gRPC
    /// routes, outside the service-to-service layers, by the edge server.
    pub http: Option<axum::Router>,
    /// The edge server's limits, when there are public HTTP routes.
    pub edge: EdgeLimits,
    /// TLS on the edge's port, if any.
    pub tls: Option<crate::rt::transport::EdgeTls>,
    /// Why the service should get no traffic now, if anything says so (the
    /// gateway: a budget of requests in flight nearly used up); `/ready`
    /// asks it.
    pub ready: Option<ReadyCheck>,
    /// Consumers and loops to stop on shutdown.
    pub background: Background,
    /// Methods (by path) allowed a deadline past the usual maximum (the
    /// upload stream).
    pub long_calls: Vec<(&'static str, Duration)>,
}

pub use crate::kernel::ReadyCheck;

/// What `/ready` looks at.
#[derive(Clone)]
struct Readiness {
    draining: Arc<AtomicBool>,
    check: Option<ReadyCheck>,
    /// The process's dependencies (see [`crate::readiness`]).
    process: ReadyChecks,
}

impl Readiness {
    /// Why the service should get no calls, or `None`: draining, or a
    /// dependency of the process not answering. What the gRPC health
    /// status follows.
    fn not_serving(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("draining: the service is stopping".to_owned());
        }
        self.process.dependencies_not_ready()
    }

    fn serving_status(&self) -> ServingStatus {
        match self.not_serving() {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        }
    }

    /// Why the service is not ready, or `None`: the one place readiness is
    /// decided (besides [`Self::not_serving`], the service's own check).
    fn not_ready(&self) -> Option<String> {
        self.not_serving()
            .or_else(|| self.check.as_ref().and_then(|check| check()))
    }
}

/// Keeps the gRPC health status of a service equal to whether it is
/// serving ([`Readiness::not_serving`]) as the dependencies come and go;
/// aborted when the service stops serving.
async fn follow_dependencies(
    readiness: Readiness,
    mut changes: rt::watch::Receiver<u64>,
    health: HealthReporter,
    names: Vec<&'static str>,
    mut last: ServingStatus,
) {
    while changes.changed().await.is_ok() {
        drop(changes.borrow_and_update());
        let status = readiness.serving_status();
        if status != last {
            set_status(&health, &names, status).await;
            last = status;
        }
    }
}

/// What a gRPC server answers a path no route knows (tonic's own fallback,
/// which the HTTP metrics layer wraps here).
async fn unimplemented() -> Response {
    let (parts, ()) = tonic::Status::unimplemented("")
        .into_http::<()>()
        .into_parts();
    Response::from_parts(parts, axum::body::Body::empty())
}

/// `GET /ready`: 200 `{"status":"ready"}`, or 503 with a JSON body saying
/// why not. `/health` stays liveness: a saturated or draining service is
/// alive, and restarting it would not help.
async fn ready(readiness: Readiness) -> Response {
    ready_answer(readiness.not_ready())
}

/// The answer of a `/ready`: 200 when `not_ready` is `None`, else 503.
fn ready_answer(not_ready: Option<String>) -> Response {
    match not_ready {
        None => axum::Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(why) => gateway::ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}"),
        )
        .into_response(),
    }
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("grpc_names", &self.grpc_names)
            .finish_non_exhaustive()
    }
}

impl RunningService {
    /// What to register.
    #[must_use]
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// The address actually bound.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reports NOT_SERVING on the health service and not ready on `/ready`
    /// (before draining).
    pub async fn set_not_serving(&self) {
        self.health_follower.abort();
        self.draining.store(true, Ordering::Relaxed);
        set_status(&self.health, &self.grpc_names, ServingStatus::NotServing).await;
    }

    /// Stops accepting and drains calls in flight for at most
    /// [`DRAIN_TIMEOUT`]; connections still open then are cut.
    ///
    /// # Errors
    /// The server loop had failed.
    pub async fn stop(mut self) -> Result<(), KernelError> {
        self.set_not_serving().await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let plugin = self.info.name.clone();
        let abort = self.task.abort_handle();
        let drained = rt::timeout(DRAIN_TIMEOUT, &mut self.task).await;
        self.background.stop().await;
        let Ok(joined) = drained else {
            tracing::warn!(service = %plugin, "drain timed out; closing open connections");
            abort.abort();
            return Ok(());
        };
        match joined {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(KernelError::Io {
                plugin,
                source: std::io::Error::other(e),
            }),
            Err(e) => Err(KernelError::Io {
                plugin,
                source: std::io::Error::other(e),
            }),
        }
    }
}

async fn set_status(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in names {
        health.set_service_status(*name, status).await;
    }
}

/// Hosts one service: binds `common.listen`, builds the service's
/// [`Domain`] (`domain`, run once the port is held), serves its routes,
/// health, `/health` and `/ready` behind the server layer stack
/// ([`crate::middleware::stack`]; public HTTP routes on the edge server,
/// [`transport::serve_edge`]), and reports SERVING. Returns once it
/// answers.
///
/// # Errors
/// [`KernelError::Io`] when the listener cannot be bound; what `domain`
/// returns.
pub async fn serve(
    kind: ServiceKind,
    common: &Common,
    runtime: &Runtime,
    domain: impl Future<Output = Result<Domain, KernelError>>,
) -> Result<RunningService, KernelError> {
    let name = kind.name();
    let io_err = |source| KernelError::Io {
        plugin: name.to_owned(),
        source,
    };
    let listener = transport::Listener::bind(common.listen)
        .await
        .map_err(io_err)?;
    let local_addr = listener.local_addr().map_err(io_err)?;

    let (health, health_svc) = tonic_health::server::health_reporter();
    let Domain {
        routes,
        grpc_names,
        http,
        edge,
        tls,
        ready: check,
        background,
        long_calls,
    } = domain.await?;
    let tls = tls
        .map(|t| t.acceptor())
        .transpose()
        .map_err(|e| KernelError::start(name, "TLS on the public port", e))?;
    let draining = Arc::new(AtomicBool::new(false));
    let readiness = Readiness {
        draining: draining.clone(),
        check,
        process: runtime.ready.clone(),
    };
    // The process's `/ready` asks the dependencies itself; each service
    // adds its own check and draining.
    let process_check = Readiness {
        process: ReadyChecks::default(),
        ..readiness.clone()
    };
    runtime
        .ready
        .add(name, Arc::new(move || process_check.not_ready()));
    let routes = routes.add_service(health_svc);
    #[cfg(not(madsim))]
    let routes = super::reflection::add(routes, &grpc_names)
        .map_err(|e| KernelError::start(name, "gRPC reflection", e))?;
    let route_readiness = readiness.clone();
    let probes = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/ready",
            axum::routing::get(move || ready(route_readiness.clone())),
        );
    let http_metrics = HttpMetricsLayer::new(&runtime.metrics);
    // Retries towards any service are on /metrics at 0 from the start.
    runtime
        .metrics
        .expect_targets(ServiceKind::ALL.iter().map(|k| k.name()));
    // Watching before reading the status, so no change in between is missed.
    let changes = runtime.ready.watch();
    let status = readiness.serving_status();
    set_status(&health, &grpc_names, status).await;
    let health_follower = rt::spawn(follow_dependencies(
        readiness.clone(),
        changes,
        health.clone(),
        grpc_names.clone(),
        status,
    ));

    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = match http {
        Some(http) => rt::spawn(transport::serve_edge(
            listener,
            Routes::from(
                routes
                    .into_axum_router()
                    .merge(probes)
                    .fallback(gateway::not_found)
                    .merge(http)
                    .layer(http_metrics),
            ),
            stack::public_http(runtime.metrics.clone()),
            edge,
            tls,
            shutdown,
        )),
        None => rt::spawn(transport::serve_mtls(
            listener,
            // The HTTP metrics layer on the plain HTTP routes only (the
            // probes, and a path no route knows): around the gRPC routes
            // it would add an axum route's box and clone to every call,
            // to count nothing (gRPC calls are the stack's metrics layer's).
            Routes::from(
                routes
                    .into_axum_router()
                    .merge(probes.layer(http_metrics.clone()))
                    .fallback_service(http_metrics.layer(
                        axum::handler::HandlerWithoutStateExt::into_service(unimplemented),
                    )),
            ),
            stack::grpc_server(
                runtime.keys.clone(),
                runtime.pool.policy(),
                runtime.metrics.clone(),
                &Deadlines {
                    max_for: long_calls,
                    ..Deadlines::default()
                },
                common.rate_limit,
            ),
            runtime.pool.tls().cloned(),
            shutdown,
        )),
    };

    let advertise = common.advertise.unwrap_or_else(|| match local_addr.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    });
    let info = ServiceInfo {
        id: format!("{name}-{advertise}-{}", local_addr.port()),
        name: name.to_owned(),
        address: advertise.to_string(),
        port: local_addr.port(),
        tags: vec!["v1".to_owned()],
        metadata: [("grpc".to_owned(), grpc_names.join(","))]
            .into_iter()
            .collect(),
        check: common.check.check(
            SocketAddr::new(advertise, local_addr.port()),
            common.check_interval,
        ),
    };
    tracing::info!(service = name, addr = %local_addr, "serving");
    Ok(RunningService {
        info,
        local_addr,
        health,
        grpc_names,
        shutdown: Some(tx),
        task,
        background,
        draining,
        health_follower,
    })
}

/// The OpenMetrics text format `/metrics` answers in when asked for it
/// (Prometheus asks), what `prometheus_client` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format `/metrics` answers in otherwise.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Admin requests served at once (a scrape or probe at a time is the norm;
/// more wait).
pub const ADMIN_CONCURRENCY: usize = 8;

/// A process's admin listener, serving; [`AdminServer::stop`] stops it.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: rt::JoinHandle<Result<(), transport::TransportError>>,
}

impl AdminServer {
    /// The address actually bound.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving (requests in flight get at most [`DRAIN_TIMEOUT`]).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let abort = self.task.abort_handle();
        if rt::timeout(DRAIN_TIMEOUT, &mut self.task).await.is_err() {
            abort.abort();
        }
    }
}

/// The admin listener's routes: `GET /metrics` (the node's metrics, in the
/// OpenMetrics text format when the `Accept` header asks for it, else in
/// Prometheus text format 0.0.4), `/health` (liveness: the process answers) and
/// `/ready` (every service of the process ready: the same check as each
/// service's own `/ready`, the first not ready named).
pub fn admin_router(runtime: &Runtime) -> axum::Router {
    let metrics = runtime.metrics.clone();
    let checks = runtime.ready.clone();
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let not_ready = checks.not_ready();
                async move { ready_answer(not_ready) }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move |headers: http::HeaderMap| {
                let openmetrics = headers
                    .get_all(http::header::ACCEPT)
                    .iter()
                    .any(|v| v.as_bytes().starts_with(b"application/openmetrics-text"));
                let (ctype, text) = if openmetrics {
                    (OPENMETRICS, metrics.render())
                } else {
                    (PROMETHEUS_TEXT, metrics.render_classic())
                };
                async move { ([(http::header::CONTENT_TYPE, ctype)], text) }
            }),
        )
        .fallback(gateway::not_found)
}

/// Serves the process's admin listener ([`admin_router`]) on `listen`
/// (port 0 picks a free one) until stopped. No service token: keep it on
/// loopback or a private network.
///
/// # Errors
/// [`KernelError::Io`] when the listener cannot be bound.
pub async fn serve_admin(
    listen: SocketAddr,
    runtime: &Runtime,
) -> Result<AdminServer, KernelError> {
    let io_err = |source| KernelError::Io {
        plugin: "admin".to_owned(),
        source,
    };
    let listener = transport::Listener::bind(listen).await.map_err(io_err)?;
    let local_addr = listener.local_addr().map_err(io_err)?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = rt::spawn(transport::serve(
        listener,
        Routes::from(admin_router(runtime)),
        tower::limit::ConcurrencyLimitLayer::new(ADMIN_CONCURRENCY),
        async move {
            let _ = rx.await;
        },
    ));
    tracing::info!(addr = %local_addr, "admin listener serving");
    Ok(AdminServer {
        local_addr,
        shutdown: Some(tx),
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn answer(readiness: &Readiness) -> (http::StatusCode, serde_json::Value) {
        let res = ready(readiness.clone()).await;
        let status = res.status();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("a JSON body"))
    }

    fn runtime() -> Runtime {
        use crate::client::{ClientPool, PoolConfig};
        let registry = Arc::new(crate::registry::memory::MemoryRegistry::new());
        let keys = crate::middleware::auth::Keyring::generate("test");
        Runtime {
            registry: registry.clone(),
            bus: Arc::new(crate::bus::memory::MemoryBus::new()),
            blobs: Arc::new(crate::blob::memory::MemoryBlobStore::new()),
            pool: ClientPool::new(registry, PoolConfig::new(keys.clone(), "test")),
            keys,
            metrics: crate::middleware::metrics::Metrics::default(),
            ready: crate::kernel::ReadyChecks::default(),
        }
    }

    #[tokio::test]
    async fn admin_serves_metrics_health_and_the_process_readiness() {
        use tower::ServiceExt as _;
        let runtime = runtime();
        let get = |path: &str| {
            admin_router(&runtime).oneshot(
                axum::extract::Request::get(path)
                    .body(axum::body::Body::empty())
                    .expect("a request"),
            )
        };
        let body = |res: Response| async move {
            let bytes = res.into_body().collect().await.expect("body").to_bytes();
            String::from_utf8(bytes.to_vec()).expect("text")
        };
        assert_eq!(get("/health").await.unwrap().status(), http::StatusCode::OK);
        let metrics = admin_router(&runtime)
            .oneshot(
                axum::extract::Request::get("/metrics")
                    .header(
                        "accept",
                        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                    )
                    .body(axum::body::Body::empty())
                    .expect("a request"),
            )
            .await
            .unwrap();
        assert_eq!(metrics.status(), http::StatusCode::OK);
        assert_eq!(metrics.headers()[http::header::CONTENT_TYPE], OPENMETRICS);
        let text = body(metrics).await;
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = get("/metrics").await.unwrap();
        assert_eq!(
            classic.headers()[http::header::CONTENT_TYPE],
            PROMETHEUS_TEXT
        );
        let classic = body(classic).await;
        assert!(
            classic.contains("# TYPE streamgate_jobs_completed_total counter"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(
            text.contains("# TYPE streamgate_jobs_completed counter"),
            "{text}"
        );
        assert_eq!(
            get("/nothing").await.unwrap().status(),
            http::StatusCode::NOT_FOUND
        );

        // Ready while every service is; the first that is not is named.
        assert_eq!(get("/ready").await.unwrap().status(), http::StatusCode::OK);
        let draining = Arc::new(AtomicBool::new(false));
        let readiness = Readiness {
            draining: draining.clone(),
            check: None,
            process: ReadyChecks::default(),
        };
        runtime
            .ready
            .add("cache", Arc::new(move || readiness.not_ready()));
        assert_eq!(get("/ready").await.unwrap().status(), http::StatusCode::OK);
        draining.store(true, Ordering::Relaxed);
        let res = get("/ready").await.unwrap();
        assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body(res).await,
            r#"{"error":"not ready: cache: draining: the service is stopping"}"#
        );
    }

    #[tokio::test]
    async fn ready_answers_why_not() {
        let saturated = Arc::new(AtomicBool::new(false));
        let flag = saturated.clone();
        let readiness = Readiness {
            draining: Arc::new(AtomicBool::new(false)),
            check: Some(Arc::new(move || {
                flag.load(Ordering::Relaxed)
                    .then(|| "API requests in flight: 240 of 256".to_owned())
            })),
            process: ReadyChecks::default(),
        };
        assert_eq!(
            answer(&readiness).await,
            (http::StatusCode::OK, serde_json::json!({"status": "ready"}))
        );
        saturated.store(true, Ordering::Relaxed);
        assert_eq!(
            answer(&readiness).await,
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "not ready: API requests in flight: 240 of 256"})
            )
        );
        saturated.store(false, Ordering::Relaxed);
        readiness.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            answer(&readiness).await,
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "not ready: draining: the service is stopping"})
            )
        );
        readiness.draining.store(false, Ordering::Relaxed);
        assert_eq!(readiness.serving_status(), ServingStatus::Serving);
        readiness
            .process
            .depend(
                "bus",
                crate::readiness::probe(|| async { Err::<(), _>("connection refused") }),
            )
            .await;
        assert_eq!(
            answer(&readiness).await,
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "not ready: bus has not answered yet: connection refused"})
            )
        );
        assert_eq!(readiness.serving_status(), ServingStatus::NotServing);
    }
}
