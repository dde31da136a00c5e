//! The client pool: discovers instances through the registry, caches one
//! channel per instance address, and wraps each in the client-side layers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng as _;
use tower::Layer as _;

use crate::middleware::request_id::{RequestId, RequestIdLayer};
use crate::proto::cache_service_client::CacheServiceClient;
use crate::registry::{Registry, RegistryError, ServiceInfo};
use crate::rt::{self, transport};

/// A channel as handed out: the transport channel behind the client layers.
pub type PoolChannel = RequestId<transport::Channel>;

/// Getting a channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The pool was closed (the node is shutting down).
    #[error("client pool closed")]
    Closed,
    /// No healthy instance of the service is registered.
    #[error("no healthy instance of {0:?}")]
    NoInstance(String),
    /// An instance registered an address that is not `ip:port`.
    #[error("instance {id:?} has unusable address {address:?}")]
    BadAddress {
        /// The instance.
        id: String,
        /// Its address.
        address: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl From<PoolError> for tonic::Status {
    fn from(e: PoolError) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}

struct Inner {
    registry: Arc<dyn Registry>,
    channels: Mutex<HashMap<SocketAddr, transport::Channel>>,
    closed: AtomicBool,
}

/// Cached channels to other services; cheap to clone.
#[derive(Clone)]
pub struct ClientPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool").finish_non_exhaustive()
    }
}

fn socket_addr(info: &ServiceInfo) -> Result<SocketAddr, PoolError> {
    let ip = info.address.parse().map_err(|_| PoolError::BadAddress {
        id: info.id.clone(),
        address: info.address.clone(),
    })?;
    Ok(SocketAddr::new(ip, info.port))
}

impl ClientPool {
    /// A pool that finds instances in `registry`.
    #[must_use]
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        let inner = Inner {
            registry,
            channels: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A channel to a healthy instance of `service`, picked at random.
    ///
    /// # Errors
    /// Closed pool, no healthy instance, or a registry failure.
    pub async fn channel(&self, service: &str) -> Result<PoolChannel, PoolError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let instances = self.inner.registry.discover(service).await?;
        if instances.is_empty() {
            return Err(PoolError::NoInstance(service.to_owned()));
        }
        let pick = &instances[rt::rng().gen_range(0..instances.len())];
        Ok(RequestIdLayer::new().layer(self.channel_to(socket_addr(pick)?)))
    }

    /// The cached channel to one address.
    fn channel_to(&self, addr: SocketAddr) -> transport::Channel {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        channels
            .entry(addr)
            .or_insert_with(|| transport::channel(addr))
            .clone()
    }

    /// A client of the cache service.
    ///
    /// # Errors
    /// As [`ClientPool::channel`].
    pub async fn cache(&self) -> Result<CacheServiceClient<PoolChannel>, PoolError> {
        Ok(CacheServiceClient::new(self.channel("cache").await?))
    }

    /// Closes the pool: cached channels are dropped, later calls fail.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}
