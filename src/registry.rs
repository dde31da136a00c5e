//! Service registry: where services announce themselves and find each other.
//!
//! One trait, several backends: [`memory`] (monolith, tests), `nats_kv`
//! (production); Consul and the simulated registry node follow the same
//! contract. Semantics follow Consul's: discovery returns the instances
//! that are not critical (passing or warning), and [`Registry::watch`] is a
//! blocking query on an index.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod consul;
pub mod memory;
pub mod nats_kv;
pub mod watcher;

/// Longest accepted service name or instance id.
pub const MAX_ID_LEN: usize = 128;
/// Most tags or metadata entries on one instance.
pub const MAX_LABELS: usize = 64;

/// One instance of a service, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Unique per instance, e.g. `cache-10.0.0.3-9006`.
    pub id: String,
    /// The service's name, e.g. `cache`; what callers discover by.
    pub name: String,
    /// Host or IP the instance is reachable at.
    pub address: String,
    /// Port of the instance's gRPC (and HTTP) listener.
    pub port: u16,
    /// Free-form tags (e.g. `v1`, `monolith`).
    pub tags: Vec<String>,
    /// Free-form key/value metadata.
    pub metadata: BTreeMap<String, String>,
    /// How the registry decides whether the instance is healthy.
    pub check: HealthCheck,
}

/// How the registry checks an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// HTTP probe or heartbeat TTL.
    pub kind: CheckKind,
    /// How often the check runs (HTTP) or the heartbeat is due (TTL).
    pub interval: Duration,
    /// How long one probe may take; for TTL, the grace after `interval`.
    pub timeout: Duration,
    /// An instance critical for this long is removed.
    pub deregister_critical_after: Duration,
}

/// The kind of health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// The registry GETs this URL: 2xx passing, 429 warning, else critical.
    Http {
        /// The URL probed.
        url: String,
    },
    /// The registry asks the standard gRPC health service at this
    /// `host:port` (plain text): SERVING passing, else critical.
    Grpc {
        /// `host:port`.
        target: String,
    },
    /// The instance must call [`Registry::heartbeat`] within `interval + timeout`.
    Ttl,
}

impl HealthCheck {
    /// A TTL check: heartbeat due every `interval`.
    #[must_use]
    pub fn ttl(interval: Duration) -> Self {
        Self {
            kind: CheckKind::Ttl,
            interval,
            timeout: interval,
            deregister_critical_after: Duration::from_secs(60),
        }
    }

    /// An HTTP check of `url` every `interval`, each probe allowed half of it.
    #[must_use]
    pub fn http(url: String, interval: Duration) -> Self {
        Self {
            kind: CheckKind::Http { url },
            timeout: interval / 2,
            ..Self::ttl(interval)
        }
    }

    /// A gRPC health check of `target` (`host:port`) every `interval`, each
    /// probe allowed half of it.
    #[must_use]
    pub fn grpc(target: String, interval: Duration) -> Self {
        Self {
            kind: CheckKind::Grpc { target },
            timeout: interval / 2,
            ..Self::ttl(interval)
        }
    }

    /// How long after the last heartbeat a TTL instance turns critical.
    #[must_use]
    pub fn ttl_expiry(&self) -> Duration {
        self.interval + self.timeout
    }

    /// Whether the instance keeps itself healthy by heartbeats (else the
    /// registry probes it).
    #[must_use]
    pub fn is_ttl(&self) -> bool {
        self.kind == CheckKind::Ttl
    }
}

/// Which check a service registers with (`--consul-check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CheckStyle {
    /// A TTL check the instance keeps passing with heartbeats.
    #[default]
    Ttl,
    /// The registry asks the instance's standard gRPC health service.
    Grpc,
    /// The registry GETs the instance's `/health`.
    Http,
}

impl CheckStyle {
    /// The check of an instance reachable at `addr`, run (or due) every
    /// `interval`.
    #[must_use]
    pub fn check(self, addr: std::net::SocketAddr, interval: Duration) -> HealthCheck {
        match self {
            Self::Ttl => HealthCheck::ttl(interval),
            Self::Grpc => HealthCheck::grpc(addr.to_string(), interval),
            Self::Http => HealthCheck::http(format!("http://{addr}/health"), interval),
        }
    }
}

/// Health of an instance as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    /// Healthy: handed out by discovery.
    Passing,
    /// Degraded but still handed out (Consul's 429).
    Warning,
    /// Failing: never handed out.
    Critical,
}

/// The answer to a blocking [`Registry::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchResult {
    /// Pass this back as `index` to block until something changes.
    pub index: u64,
    /// The healthy instances at `index`.
    pub instances: Vec<ServiceInfo>,
}

/// A registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The instance is not registered (e.g. the registry lost its data):
    /// the caller should register again.
    #[error("instance {0:?} is not registered")]
    NotFound(String),
    /// The registry could not be reached or failed; try again later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The request was refused as malformed.
    #[error("invalid registration: {0}")]
    Invalid(String),
}

/// The registry contract: register, deregister, discover, watch, health,
/// with Consul's semantics (the contract suite is `testkit/src/registry_contract.rs`).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Adds or replaces the instance `info.id`; it starts passing.
    async fn register(&self, info: &ServiceInfo) -> Result<(), RegistryError>;
    /// Removes instance `id` at once; unknown ids are not an error.
    async fn deregister(&self, id: &str) -> Result<(), RegistryError>;
    /// Passes the TTL check of instance `id`.
    ///
    /// [`RegistryError::NotFound`] means the registration was lost.
    async fn heartbeat(&self, id: &str) -> Result<(), RegistryError>;
    /// Confirms instance `id` is still registered, without touching its
    /// check (for instances the registry probes itself, which send no
    /// heartbeats). [`RegistryError::NotFound`] means the registration
    /// was lost.
    async fn confirm(&self, id: &str) -> Result<(), RegistryError>;
    /// The passing (and warning) instances of service `name`.
    async fn discover(&self, name: &str) -> Result<Vec<ServiceInfo>, RegistryError> {
        Ok(self.watch(name, 0, Duration::ZERO).await?.instances)
    }
    /// Blocks until the healthy set of `name` changes past `index`, or `wait`
    /// passes, then returns the current set and its index (>= 1).
    async fn watch(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<WatchResult, RegistryError>;
    /// Whether the registry itself is reachable.
    async fn health(&self) -> Result<(), RegistryError>;
}

/// Checks what every backend must refuse before storing it.
///
/// # Errors
/// [`RegistryError::Invalid`] naming the offending field.
pub fn validate(info: &ServiceInfo) -> Result<(), RegistryError> {
    let ok_id = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    if !ok_id(&info.id) {
        return Err(RegistryError::Invalid(format!("id {:?}", info.id)));
    }
    if !ok_id(&info.name) {
        return Err(RegistryError::Invalid(format!("name {:?}", info.name)));
    }
    if info.address.is_empty() || info.address.len() > 255 {
        return Err(RegistryError::Invalid("address".into()));
    }
    if info.port == 0 {
        return Err(RegistryError::Invalid("port 0".into()));
    }
    if info.tags.len() > MAX_LABELS || info.metadata.len() > MAX_LABELS {
        return Err(RegistryError::Invalid(
            "too many tags or metadata entries".into(),
        ));
    }
    if info.check.interval.is_zero() {
        return Err(RegistryError::Invalid("check interval 0".into()));
    }
    Ok(())
}

/// Helpers for this crate's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use super::{HealthCheck, ServiceInfo};

    /// A valid instance of `name` on 127.0.0.1:`port` with a TTL check.
    pub fn instance(name: &str, port: u16, ttl: Duration) -> ServiceInfo {
        ServiceInfo {
            id: format!("{name}-{port}"),
            name: name.to_owned(),
            address: "127.0.0.1".to_owned(),
            port,
            tags: vec!["v1".to_owned()],
            metadata: std::iter::once(("zone".to_owned(), "a".to_owned())).collect(),
            check: HealthCheck::ttl(ttl),
        }
    }
}
