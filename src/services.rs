//! The nine services, and the one place that lists them: [`ServiceKind`]
//! (names and ports) and [`ServiceConfig`] (each service's own `Config`).
//! Every service module has the same shape: a validated `Config` and
//! `domain(config, common, runtime)`, which builds what the service serves;
//! [`start`] hosts it ([`host::serve`]). The per-service binaries, the
//! monolith, the simulator and the tests all start services through
//! [`start`] (directly, or as a kernel plugin: [`ServicePlugin`]).
//! ARCHITECTURE.md says how to add a tenth.

use crate::kernel::{KernelError, Runtime};

pub mod auth;
pub mod cache;
pub mod gateway;
pub mod host;
mod kind;
pub mod media;
pub mod metadata;
pub mod monitor;
mod plugin;
#[cfg(not(madsim))]
pub mod reflection;
pub mod streaming;
pub mod transcoder;
pub mod upload;
pub mod worker;

pub use host::{Background, Common, Domain, RunningService};
pub use kind::ServiceKind;
pub use plugin::ServicePlugin;

/// Largest upload accepted by default (2 GiB).
pub const MAX_UPLOAD_BYTES: u64 = 2 << 30;

/// One service's configuration: which service, and its own settings.
// Made once per service at start and kept: the gateway's larger settings
// (limits, rates) cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceConfig {
    /// The HTTP front door.
    ApiGateway(gateway::Config),
    /// Receives uploads.
    Upload(upload::Config),
    /// Runs ffmpeg.
    Transcoder(transcoder::Config),
    /// Serves originals and HLS.
    Streaming(streaming::Config),
    /// The catalog.
    Metadata(metadata::Config),
    /// The TTL cache.
    Cache(cache::Config),
    /// Accounts and tokens.
    Auth(auth::Config),
    /// The job queue.
    Worker(worker::Config),
    /// Health and alerts.
    Monitor(monitor::Config),
}

macro_rules! from_configs {
    ($($variant:ident($module:ident)),* $(,)?) => {
        $(impl From<$module::Config> for ServiceConfig {
            fn from(config: $module::Config) -> Self {
                Self::$variant(config)
            }
        })*
    };
}

from_configs!(
    ApiGateway(gateway),
    Upload(upload),
    Transcoder(transcoder),
    Streaming(streaming),
    Metadata(metadata),
    Cache(cache),
    Auth(auth),
    Worker(worker),
    Monitor(monitor),
);

impl ServiceConfig {
    /// `kind`'s defaults.
    #[must_use]
    pub fn new(kind: ServiceKind) -> Self {
        match kind {
            ServiceKind::ApiGateway => gateway::Config::default().into(),
            ServiceKind::Upload => upload::Config::default().into(),
            ServiceKind::Transcoder => transcoder::Config::default().into(),
            ServiceKind::Streaming => streaming::Config::default().into(),
            ServiceKind::Metadata => metadata::Config::default().into(),
            ServiceKind::Cache => cache::Config::default().into(),
            ServiceKind::Auth => auth::Config::default().into(),
            ServiceKind::Worker => worker::Config::default().into(),
            ServiceKind::Monitor => monitor::Config::default().into(),
        }
    }

    /// Which service this configures.
    #[must_use]
    pub fn kind(&self) -> ServiceKind {
        match self {
            Self::ApiGateway(_) => ServiceKind::ApiGateway,
            Self::Upload(_) => ServiceKind::Upload,
            Self::Transcoder(_) => ServiceKind::Transcoder,
            Self::Streaming(_) => ServiceKind::Streaming,
            Self::Metadata(_) => ServiceKind::Metadata,
            Self::Cache(_) => ServiceKind::Cache,
            Self::Auth(_) => ServiceKind::Auth,
            Self::Worker(_) => ServiceKind::Worker,
            Self::Monitor(_) => ServiceKind::Monitor,
        }
    }

    /// Checks the settings before anything starts.
    ///
    /// # Errors
    /// What is wrong, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Auth(c) => c.validate(),
            Self::Worker(c) => c.validate(),
            Self::Monitor(c) => c.validate(),
            Self::Cache(c) => c.validate(),
            Self::Upload(c) => c.validate(),
            Self::ApiGateway(_) | Self::Transcoder(_) | Self::Streaming(_) | Self::Metadata(_) => {
                Ok(())
            }
        }
    }

    /// Builds the service's [`Domain`].
    async fn domain(&self, common: &Common, runtime: &Runtime) -> Result<Domain, KernelError> {
        match self {
            Self::ApiGateway(c) => gateway::domain(c, common, runtime).await,
            Self::Upload(c) => upload::domain(c, common, runtime).await,
            Self::Transcoder(c) => transcoder::domain(c, common, runtime).await,
            Self::Streaming(c) => streaming::domain(c, common, runtime).await,
            Self::Metadata(c) => metadata::domain(c, common, runtime).await,
            Self::Cache(c) => cache::domain(c, common, runtime).await,
            Self::Auth(c) => auth::domain(c, common, runtime).await,
            Self::Worker(c) => worker::domain(c, common, runtime).await,
            Self::Monitor(c) => monitor::domain(c, common, runtime).await,
        }
    }
}

/// Starts the service `config` configures: validates it, binds, serves,
/// reports SERVING. Returns once it answers; [`RunningService::stop`]
/// drains and stops it.
///
/// # Errors
/// Invalid settings, a port that cannot be bound, or the service's own
/// start failing (a store that will not open, a bus that refuses).
pub async fn start(
    config: &ServiceConfig,
    common: &Common,
    runtime: &Runtime,
) -> Result<RunningService, KernelError> {
    let kind = config.kind();
    config.validate().map_err(|reason| KernelError::Config {
        plugin: kind.name().to_owned(),
        reason,
    })?;
    host::serve(kind, common, runtime, config.domain(common, runtime)).await
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::blob::memory::MemoryBlobStore;
    use crate::bus::memory::MemoryBus;
    use crate::client::{ClientPool, PoolConfig};
    use crate::middleware::auth::Keyring;
    use crate::registry::memory::MemoryRegistry;

    /// A store that will not open stops every service that keeps one the
    /// same way: [`KernelError::Start`] naming the plugin, its cause kept.
    #[tokio::test]
    async fn a_store_that_will_not_open_is_a_start_error_everywhere() {
        let registry = Arc::new(MemoryRegistry::new());
        let keys = Keyring::generate("test");
        let runtime = Runtime {
            registry: registry.clone(),
            bus: Arc::new(MemoryBus::new()),
            blobs: Arc::new(MemoryBlobStore::new()),
            pool: ClientPool::new(registry, PoolConfig::new(keys.clone(), "test")),
            keys,
            metrics: crate::middleware::metrics::Metrics::default(),
            ready: Default::default(),
        };
        let dir = tempfile::tempdir().expect("a scratch directory");
        let stores = [
            (ServiceKind::Metadata, metadata::DB_FILE),
            (ServiceKind::Upload, upload::DB_FILE),
            (ServiceKind::Auth, auth::DB_FILE),
            (ServiceKind::Worker, worker::DB_FILE),
        ];
        for (kind, file) in stores {
            // A directory where the database file should be: SQLite cannot
            // open it.
            std::fs::create_dir_all(dir.path().join(file)).expect("a directory");
            let common = Common {
                data_dir: Some(dir.path().to_owned()),
                ..Common::ephemeral()
            };
            let err = start(&ServiceConfig::new(kind), &common, &runtime)
                .await
                .expect_err("the store does not open");
            match &err {
                KernelError::Start { plugin, what, .. } => {
                    assert_eq!(
                        (plugin.as_str(), what.as_str()),
                        (kind.name(), "its database")
                    );
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            assert!(!err.is_config(), "not a usage error: exits 1, not 2");
            assert!(
                std::error::Error::source(&err).is_some(),
                "{kind:?}: the cause is kept"
            );
        }
        // Invalid settings are the other kind: a usage error.
        let zero = cache::Config {
            limits: cache::state::Limits {
                capacity_bytes: 0,
                ..cache::state::Limits::default()
            },
        };
        let err = start(&zero.into(), &Common::ephemeral(), &runtime)
            .await
            .expect_err("refused");
        assert!(err.is_config(), "{err:?}");
    }
}

/// The simulator's modelled database node a `--database-url` names (the
/// simulation build has no PostgreSQL client: there an `http://ip:port`
/// URL names the node, `services::metadata::remote`), and the transport
/// to it.
///
/// # Errors
/// The URL is not `http://ip:port`.
#[cfg(madsim)]
pub(crate) fn sim_database(
    url: &crate::schema::DatabaseUrl,
) -> Result<
    (
        String,
        std::sync::Arc<dyn crate::registry::consul::HttpTransport>,
    ),
    String,
> {
    match url.expose().strip_prefix("http://") {
        Some(addr) => Ok((
            format!("http://{}", addr.trim_end_matches('/')),
            std::sync::Arc::new(crate::registry::consul::SimTransport),
        )),
        None => Err(format!(
            "{url:?}: the simulation build reaches only the modelled database (http://ip:port)"
        )),
    }
}
