//! The nine services. Each is started by [`start`], the one entry point that
//! the per-service binaries, the monolith and the simulator all call.
//!
//! Every service process serves, on one port: its gRPC services, the standard
//! `grpc.health.v1.Health` service, and HTTP `GET /health`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::bus::Subscription;
use crate::kernel::{KernelError, Runtime, ServiceKind};
use crate::middleware::auth::VerifyLayer;
use crate::middleware::error::ErrorLayer;
use crate::middleware::metrics::MetricsLayer;
use crate::middleware::rate_limit::RateLimitLayer;
use crate::middleware::request_id::RequestIdLayer;
use crate::middleware::timeout::TimeoutLayer;
use crate::middleware::trace::ServerTraceLayer;
use crate::registry::{HealthCheck, ServiceInfo};
use crate::rt::{self, transport};

pub mod auth;
pub mod cache;
pub mod gateway;
pub mod media;
pub mod metadata;
pub mod monitor;
pub mod streaming;
pub mod transcoder;
pub mod upload;
pub mod worker;

/// Options of one service instance (data, not live handles).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceOpts {
    /// Which service.
    pub kind: ServiceKind,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address other services reach it at (default: the listen IP, or
    /// 127.0.0.1 when listening on all interfaces).
    pub advertise: Option<IpAddr>,
    /// Heartbeat TTL interval of its registration.
    pub check_interval: Duration,
    /// Per calling service: calls in a burst, and calls per second.
    pub rate_limit: (u32, f64),
    /// Where the service keeps its files (SQLite databases); `None` keeps
    /// them in memory (tests, the simulator).
    pub data_dir: Option<PathBuf>,
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// How videos are transcoded.
    pub engine: transcoder::Engine,
    /// The auth service's token signing secret; `None` draws a random one
    /// at start (tokens then end with the process).
    pub auth_secret: Option<auth::Secret>,
    /// The services the auth service issues service tokens to.
    pub auth_clients: auth::ServiceClients,
    /// Where the worker keeps its jobs.
    pub job_queue: worker::JobQueue,
}

impl ServiceOpts {
    /// Where the service keeps its database `file`: under the data dir
    /// (created if missing), or `None` to keep it in memory.
    ///
    /// # Errors
    /// The data dir cannot be created (the message names it).
    pub fn db_path(&self, file: &str) -> Result<Option<PathBuf>, String> {
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Some(dir.join(file)))
    }
}

/// Largest upload accepted by default (2 GiB).
pub const MAX_UPLOAD_BYTES: u64 = 2 << 30;

impl ServiceOpts {
    /// Defaults for `kind` on `host`, at the design's port.
    #[must_use]
    pub fn new(kind: ServiceKind, host: IpAddr) -> Self {
        Self {
            kind,
            listen: SocketAddr::new(host, kind.default_port()),
            advertise: None,
            check_interval: Duration::from_secs(2),
            rate_limit: RATE_LIMIT,
            data_dir: None,
            max_upload_bytes: MAX_UPLOAD_BYTES,
            engine: transcoder::Engine::default(),
            auth_secret: None,
            auth_clients: auth::ServiceClients::default(),
            job_queue: worker::JobQueue::default(),
        }
    }
}

/// Deadline of a call that sets none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest deadline a call may ask for.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest deadline of an upload stream (UploadService.Upload): a large
/// video over a slow link takes long, so what bounds an upload is
/// [`UPLOAD_IDLE_TIMEOUT`] between chunks, with this as the outer limit
/// (2 GiB at 100 kB/s).
pub const MAX_UPLOAD_CALL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Longest an upload may go without a byte arriving (at the gateway, from
/// the client; at the upload service, from the gateway) before it is cut.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// routes, outside the service-to-service layers.
    pub http: Option<axum::Router>,
    /// Consumers and loops to stop on shutdown.
    pub background: Background,
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

    /// Reports NOT_SERVING on the health service (before draining).
    pub async fn set_not_serving(&self) {
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
                source: std::io::Error::other(e.to_string()),
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

/// The domain part of `kind`: its gRPC routes, public HTTP routes and
/// background work.
async fn domain(opts: &ServiceOpts, rt: &Runtime) -> Result<Domain, KernelError> {
    match opts.kind {
        ServiceKind::Cache => {
            let (routes, grpc_names) = cache::routes(cache::state::Limits::default());
            Ok(Domain {
                routes,
                grpc_names,
                ..Domain::default()
            })
        }
        ServiceKind::ApiGateway => gateway::domain(opts, rt).await,
        ServiceKind::Upload => upload::domain(opts, rt).await,
        ServiceKind::Transcoder => transcoder::domain(opts, rt).await,
        ServiceKind::Streaming => streaming::domain(opts, rt).await,
        ServiceKind::Metadata => metadata::domain(opts, rt).await,
        ServiceKind::Worker => worker::domain(opts, rt).await,
        ServiceKind::Auth => auth::domain(opts, rt).await,
        ServiceKind::Monitor => monitor::domain(opts, rt).await,
    }
}

/// Starts one service: binds, serves its routes, health and `/health`
/// behind the server layers, and reports SERVING. Returns once it answers.
///
/// # Errors
/// [`KernelError::Io`] when the listener cannot be bound.
pub async fn start(opts: &ServiceOpts, rt: &Runtime) -> Result<RunningService, KernelError> {
    let name = opts.kind.name();
    let io_err = |source| KernelError::Io {
        plugin: name.to_owned(),
        source,
    };
    let listener = transport::Listener::bind(opts.listen)
        .await
        .map_err(io_err)?;
    let local_addr = listener.local_addr().map_err(io_err)?;

    let (health, health_svc) = tonic_health::server::health_reporter();
    let metrics = rt.metrics.clone();
    let Domain {
        routes,
        grpc_names,
        http,
        background,
    } = domain(opts, rt).await?;
    let router = routes
        .add_service(health_svc)
        .into_axum_router()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get(move || async move { metrics.render() }),
        );
    set_status(&health, &grpc_names, ServingStatus::Serving).await;

    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = match http {
        // The gateway: public HTTP beside health; no service-token, gRPC
        // deadline or per-caller limit layers (its API has its own limits).
        Some(http) => rt::spawn(transport::serve(
            listener,
            Routes::from(router.fallback(gateway::not_found).merge(http)),
            tower::ServiceBuilder::new()
                .layer(ServerTraceLayer)
                .layer(RequestIdLayer::new())
                .layer(MetricsLayer::new(rt.metrics.clone())),
            shutdown,
        )),
        // Outermost first: trace, request id (the trace id unless the call
        // names one), error handling, metrics, deadline, service token, rate
        // limit.
        None => rt::spawn(transport::serve(
            listener,
            Routes::from(router),
            tower::ServiceBuilder::new()
                .layer(ServerTraceLayer)
                .layer(RequestIdLayer::new())
                .layer(ErrorLayer)
                .layer(MetricsLayer::new(rt.metrics.clone()))
                .layer(
                    TimeoutLayer::new(DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT)
                        .with_max_for(upload::UPLOAD_PATH, MAX_UPLOAD_CALL_TIMEOUT),
                )
                .layer(VerifyLayer::new(rt.keys.clone()))
                .layer(RateLimitLayer::new(opts.rate_limit.0, opts.rate_limit.1)),
            shutdown,
        )),
    };

    let advertise = opts.advertise.unwrap_or_else(|| match local_addr.ip() {
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
        check: HealthCheck::ttl(opts.check_interval),
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
    })
}
