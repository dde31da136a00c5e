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
    /// The node's metrics, served on every service's `/metrics`.
    pub metrics: Metrics,
}

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
        matches!(self, Self::Config { .. })
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
        let user_hook = pool.on_transition.take();
        let recorder = metrics.clone();
        pool.on_transition = Some(Arc::new(move |instance: &str, t| {
            recorder.breaker(instance, t);
            if let Some(hook) = &user_hook {
                hook(instance, t);
            }
        }));
        let pool = ClientPool::new(registry.clone(), pool);
        let runtime = Runtime {
            registry,
            bus,
            blobs,
            pool,
            keys,
            metrics,
        };
        let mut kernel = Self {
            runtime,
            plugins: Vec::new(),
            registrations: Vec::new(),
            keepalive: None,
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

/// Heartbeats every registration; re-registers one the registry lost.
async fn keep_registered(registry: Arc<dyn Registry>, infos: Vec<ServiceInfo>) {
    loop {
        rt::sleep(HEARTBEAT_INTERVAL).await;
        for info in &infos {
            match registry.heartbeat(&info.id).await {
                Ok(()) => {}
                Err(RegistryError::NotFound(_)) if rt::faults::injected(Bug::NoReregistration) => {}
                Err(RegistryError::NotFound(_)) => {
                    tracing::warn!(id = %info.id, "registration lost; registering again");
                    if let Err(e) = registry.register(info).await {
                        tracing::warn!(id = %info.id, error = %e, "re-registration failed");
                    }
                }
                Err(e) => tracing::warn!(id = %info.id, error = %e, "heartbeat failed"),
            }
        }
    }
}
