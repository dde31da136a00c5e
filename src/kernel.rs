//! The microkernel: builds the runtime handles (event bus, registry, client
//! pool), starts the plugins (the services), registers them and keeps their
//! registrations alive, and stops everything in reverse.
//!
//! Order on start: bus, registry, pool, plugins (each binds and serves),
//! register. Order on stop: health NOT_SERVING, deregister, stop plugins
//! (drain), close pool, close bus. Registration comes after a service
//! answers, and deregistration before it drains, so discovery never hands
//! out an instance that refuses calls.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::blob::BlobStore;
use crate::blob::memory::MemoryBlobStore;
use crate::bus::EventBus;
use crate::client::{ClientPool, PoolConfig};
use crate::middleware::auth::Keyring;
use crate::middleware::bus_metrics::MeteredBus;
use crate::middleware::metrics::Metrics;
use crate::registry::{Registry, RegistryError, ServiceInfo};
use crate::rt;
use crate::rt::faults::Bug;

/// How the services of this process are deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Every service in one process, with an in-memory bus and registry.
    #[default]
    Monolith,
    /// One service per process, with NATS and a networked registry.
    Microservices,
}

/// Handles every plugin gets: the live, shared parts of a node.
#[derive(Clone)]
pub struct Runtime {
    /// Where services register and discover each other.
    pub registry: Arc<dyn Registry>,
    /// Where events are published and consumed.
    pub bus: Arc<dyn EventBus>,
    /// Where video bytes are stored (shared by the node's services).
    pub blobs: Arc<dyn BlobStore>,
    /// Cached channels to other services.
    pub pool: ClientPool,
    /// Service-token keys: servers verify with them, the pool signs.
    pub keys: Keyring,
    /// The node's metrics, served on the admin listener's `/metrics`.
    pub metrics: Metrics,
    /// What the admin listener's `/ready` asks: one check per service
    /// served (each service adds its own when it starts serving).
    pub ready: ReadyChecks,
}

pub use crate::readiness::{ReadyCheck, ReadyChecks};

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// A kernel or plugin lifecycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A plugin's options were refused.
    #[error("plugin {plugin}: invalid options: {reason}")]
    Config {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// Something a plugin needs would not open or connect: its database,
    /// the event bus, the job store, a work dir. The same variant in every
    /// service; the source says why.
    #[error("plugin {plugin}: cannot open {what}")]
    Start {
        /// The plugin.
        plugin: String,
        /// What would not open ("its database", "the event bus", ...).
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listener could not be bound or served.
    #[error("plugin {plugin}: {source}")]
    Io {
        /// The plugin.
        plugin: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Something the node needs (the NATS server, the registry) did not
    /// answer before the start-up timeout.
    #[error("{what} not reachable after waiting {waited:?}: {last_error}")]
    Unreachable {
        /// What was waited for, and where.
        what: String,
        /// How long.
        waited: Duration,
        /// The last attempt's failure.
        last_error: String,
    },
}

impl KernelError {
    /// [`KernelError::Start`]: `plugin` could not open `what`.
    pub fn start(
        plugin: &str,
        what: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Start {
            plugin: plugin.to_owned(),
            what: what.to_owned(),
            source: source.into(),
        }
    }

    /// Whether the options or configuration were refused (a usage error,
    /// exit code 2), not the start itself failing.
    #[must_use]
    pub fn is_config(&self) -> bool {
        match self {
            Self::Config { .. } => true,
            // A store whose schema is newer than the binary, or whose
            // migration failed: restarting will not help.
            Self::Start { source, .. } => source.is::<crate::schema::SchemaError>(),
            _ => false,
        }
    }
}

/// The swappable back ends a node is started on.
#[derive(Clone)]
pub struct Seams {
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
    /// The service registry.
    pub registry: Arc<dyn Registry>,
    /// The blob store.
    pub blobs: Arc<dyn BlobStore>,
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

impl Seams {
    /// `bus` and `registry` with blobs in memory.
    #[must_use]
    pub fn new(bus: Arc<dyn EventBus>, registry: Arc<dyn Registry>) -> Self {
        Self {
            bus,
            registry,
            blobs: Arc::new(MemoryBlobStore::new()),
        }
    }
}

/// A unit the kernel starts and stops: a service, or a background worker.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's name, for logs and errors.
    fn name(&self) -> &str;
    /// Validates options and prepares state; nothing is served yet.
    async fn init(&mut self, runtime: &Runtime) -> Result<(), KernelError>;
    /// Starts serving; returns once the plugin answers calls.
    async fn start(&mut self, runtime: &Runtime) -> Result<(), KernelError>;
    /// What to register once started, if anything.
    fn registration(&self) -> Option<ServiceInfo>;
    /// Announces the plugin is going away (health NOT_SERVING).
    async fn prepare_stop(&mut self) {}
    /// Stops, draining work in flight.
    async fn stop(&mut self) -> Result<(), KernelError>;
}

/// How often registrations are renewed (and re-created after loss).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A started node: its runtime handles and plugins.
pub struct Kernel {
    runtime: Runtime,
    plugins: Vec<Box<dyn Plugin>>,
    registrations: Vec<ServiceInfo>,
    keepalive: Option<rt::JoinHandle<()>>,
    /// Probes the dependencies (see [`crate::readiness`]).
    probing: Option<rt::JoinHandle<()>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("registrations", &self.registrations)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Starts `plugins` on a node of one process: a fresh random service-token
    /// key shared by its services (the monolith; tests).
    ///
    /// # Errors
    /// The first plugin or registry failure; plugins already started are stopped.
    pub async fn start(
        bus: Arc<dyn EventBus>,
        registry: Arc<dyn Registry>,
        plugins: Vec<Box<dyn Plugin>>,
    ) -> Result<Self, KernelError> {
        let pool = PoolConfig::new(Keyring::generate("local"), "monolith");
        Self::start_with(Seams::new(bus, registry), pool, plugins).await
    }

    /// Starts `plugins`; `pool` says who this node calls as, and the keys
    /// its servers verify and its pool signs service tokens with.
    ///
    /// # Errors
    /// The first plugin or registry failure; plugins already started are stopped.
    pub async fn start_with(
        seams: Seams,
        pool: PoolConfig,
        plugins: Vec<Box<dyn Plugin>>,
    ) -> Result<Self, KernelError> {
        let Seams {
            bus,
            registry,
            blobs,
        } = seams;
        registry.health().await?;
        let keys = pool.keys.clone();
        let metrics = Metrics::default();
        let mut pool = pool;
        // Breaker transitions, retries and budget refusals go to the node's
        // metrics, by called service.
        pool.metrics = Some(metrics.clone());
        let pool = ClientPool::new(registry.clone(), pool);
        // Publishes, deliveries and handler failures are counted whatever
        // the backend.
        let bus: Arc<dyn EventBus> = Arc::new(MeteredBus::new(bus, metrics.clone()));
        let (registry_probe, bus_probe, blobs_probe) =
            (registry.clone(), bus.clone(), blobs.clone());
        let runtime = Runtime {
            registry,
            bus,
            blobs,
            pool,
            keys,
            metrics,
            ready: seam_dependencies(&registry_probe, &bus_probe, &blobs_probe).await,
        };
        let mut kernel = Self {
            runtime,
            plugins: Vec::new(),
            registrations: Vec::new(),
            keepalive: None,
            probing: None,
        };
        for mut plugin in plugins {
            let started = async {
                plugin.init(&kernel.runtime).await?;
                plugin.start(&kernel.runtime).await
            }
            .await;
            if let Err(e) = started {
                kernel.shutdown().await;
                return Err(e);
            }
            kernel.plugins.push(plugin);
        }
        // Each dependency was probed when added, so the services knew
        // whether to say they serve; from now on, in the background.
        kernel.probing = Some(rt::spawn(kernel.runtime.ready.clone().keep_probing()));
        for info in kernel.plugins.iter().filter_map(|p| p.registration()) {
            if let Err(e) = kernel.runtime.registry.register(&info).await {
                kernel.shutdown().await;
                return Err(e.into());
            }
            tracing::info!(id = %info.id, addr = %format!("{}:{}", info.address, info.port), "registered");
            kernel.registrations.push(info);
        }
        let (registry, infos) = (
            kernel.runtime.registry.clone(),
            kernel.registrations.clone(),
        );
        kernel.keepalive = Some(rt::spawn(keep_registered(registry, infos)));
        Ok(kernel)
    }

    /// The node's registry.
    #[must_use]
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.runtime.registry
    }

    /// The node's client pool.
    #[must_use]
    pub fn pool(&self) -> &ClientPool {
        &self.runtime.pool
    }

    /// The node's runtime handles.
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// What this node registered.
    #[must_use]
    pub fn registrations(&self) -> &[ServiceInfo] {
        &self.registrations
    }

    /// Stops the node: NOT_SERVING, deregister, stop plugins in reverse
    /// order, close the pool, close the bus. Failures are logged, not fatal.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.keepalive.take() {
            task.abort();
        }
        if let Some(task) = self.probing.take() {
            task.abort();
        }
        for plugin in &mut self.plugins {
            plugin.prepare_stop().await;
        }
        tracing::debug!("plugins not serving; deregistering");
        for info in self.registrations.drain(..) {
            if let Err(e) = self.runtime.registry.deregister(&info.id).await {
                tracing::warn!(id = %info.id, error = %e, "deregister failed");
            }
        }
        while let Some(mut plugin) = self.plugins.pop() {
            tracing::debug!(plugin = plugin.name(), "stopping");
            if let Err(e) = plugin.stop().await {
                tracing::warn!(plugin = plugin.name(), error = %e, "stop failed");
            }
        }
        tracing::debug!("closing the pool and the bus");
        self.runtime.pool.close();
        self.runtime.bus.close().await;
    }
}

/// The readiness of a new node, depending on its seams: the registry, the
/// bus, and the blob store (a key that is not there is an answer).
async fn seam_dependencies(
    registry: &Arc<dyn Registry>,
    bus: &Arc<dyn EventBus>,
    blobs: &Arc<dyn BlobStore>,
) -> ReadyChecks {
    use crate::readiness::probe;
    let ready = ReadyChecks::default();
    let registry = registry.clone();
    ready
        .depend(
            "registry",
            probe(move || {
                let registry = registry.clone();
                async move { registry.health().await }
            }),
        )
        .await;
    let bus = bus.clone();
    ready
        .depend(
            "bus",
            probe(move || {
                let bus = bus.clone();
                async move { bus.health().await }
            }),
        )
        .await;
    let blobs = blobs.clone();
    ready
        .depend(
            "blob store",
            probe(move || {
                let blobs = blobs.clone();
                async move {
                    match blobs.size(READINESS_PROBE_KEY).await {
                        Ok(_) | Err(crate::blob::BlobError::NotFound(_)) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            }),
        )
        .await;
    ready
}

/// The blob key the readiness probe asks the size of (it need not exist).
const READINESS_PROBE_KEY: &str = "readiness-probe";

/// Heartbeat failures in a row after which a TTL registration is confirmed
/// ([`Registry::confirm`]): an agent that answers every heartbeat with an
/// error may have lost it (Consul before 1.x answered 500 for unknown
/// checks), and a lost one is registered again.
pub const CONFIRM_AFTER_FAILURES: u32 = 3;

/// One registration's keep-alive.
#[derive(Debug)]
struct Kept {
    info: ServiceInfo,
    /// Heartbeats (or confirmations) failed in a row.
    failures: u32,
    /// When to look at it next.
    due: rt::Instant,
}

impl Kept {
    /// Longest one call to the registry may take for this registration: a
    /// hung registry must not hold a heartbeat past the instance's TTL, so
    /// half the TTL window (the next heartbeat still lands in time once the
    /// registry answers again); for a check the registry runs, its interval.
    fn call_bound(&self) -> Duration {
        let check = &self.info.check;
        let bound = if check.is_ttl() {
            check.ttl_expiry() / 2
        } else {
            check.interval
        };
        bound.max(Duration::from_millis(100))
    }

    /// The wait after `failures` failures in a row: the heartbeat interval,
    /// doubling per repeated failure, at most half the TTL window (so a
    /// registry that recovers sees a heartbeat well within a TTL).
    fn retry_after(&self) -> Duration {
        let cap = HEARTBEAT_INTERVAL.max(self.call_bound());
        let doublings = self.failures.saturating_sub(1).min(16);
        HEARTBEAT_INTERVAL.saturating_mul(1 << doublings).min(cap)
    }

    /// Heartbeats (TTL checks) or confirms (checks the registry runs) the
    /// registration; registers it again when the registry lost it.
    async fn tick(&mut self, registry: &dyn Registry) {
        let id = self.info.id.clone();
        let bound = self.call_bound();
        let bounded = |r: Result<Result<(), RegistryError>, rt::Elapsed>| {
            r.unwrap_or_else(|_| {
                Err(RegistryError::Unavailable(format!(
                    "no answer within {bound:?}"
                )))
            })
        };
        let outcome = if self.info.check.is_ttl() {
            let beat = bounded(rt::timeout(bound, registry.heartbeat(&id)).await);
            match beat {
                Err(RegistryError::Unavailable(e))
                    if self.failures + 1 >= CONFIRM_AFTER_FAILURES =>
                {
                    match bounded(rt::timeout(bound, registry.confirm(&id)).await) {
                        Err(RegistryError::NotFound(n)) => Err(RegistryError::NotFound(n)),
                        _ => Err(RegistryError::Unavailable(e)),
                    }
                }
                other => other,
            }
        } else {
            bounded(rt::timeout(bound, registry.confirm(&id)).await)
        };
        match outcome {
            Ok(()) => self.failures = 0,
            Err(RegistryError::NotFound(_)) if rt::faults::injected(Bug::NoReregistration) => {}
            Err(RegistryError::NotFound(_)) => {
                tracing::warn!(%id, "registration lost; registering again");
                match bounded(rt::timeout(bound, registry.register(&self.info)).await) {
                    Ok(()) => self.failures = 0,
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(%id, error = %e, "re-registration failed");
                    }
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(%id, error = %e, failures = self.failures, retry_in = ?self.retry_after(), "heartbeat failed");
            }
        }
        self.due = rt::now()
            + if self.failures == 0 {
                HEARTBEAT_INTERVAL
            } else {
                self.retry_after()
            };
    }
}

/// Heartbeats every TTL registration, confirms the others (whose checks
/// the registry runs itself: no heartbeats), and re-registers one the
/// registry lost. Failures are logged and retried with backoff.
async fn keep_registered(registry: Arc<dyn Registry>, infos: Vec<ServiceInfo>) {
    let first = rt::now() + HEARTBEAT_INTERVAL;
    let mut kept: Vec<Kept> = infos
        .into_iter()
        .map(|info| Kept {
            info,
            failures: 0,
            due: first,
        })
        .collect();
    loop {
        let Some(next) = kept.iter().map(|k| k.due).min() else {
            return;
        };
        rt::sleep_until(next).await;
        let now = rt::now();
        for k in kept.iter_mut().filter(|k| k.due <= now) {
            k.tick(&*registry).await;
        }
    }
}
