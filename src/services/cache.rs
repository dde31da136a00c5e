//! cache (9006): a byte-bounded TTL cache over gRPC.

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::cache_service_server::CacheServiceServer;
use crate::services::{Common, Domain};

pub mod error;
pub mod server;
pub mod state;

pub use error::CacheError;
pub use server::CacheServer;

/// The cache's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// How much it holds.
    pub limits: state::Limits,
}

impl Config {
    /// Checks the limits.
    ///
    /// # Errors
    /// A limit of zero.
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate()
    }
}

/// The gRPC routes of one cache instance.
#[must_use]
pub fn routes(limits: state::Limits) -> (Routes, Vec<&'static str>) {
    let svc = CacheServiceServer::new(CacheServer::new(limits));
    (
        Routes::new(svc),
        vec![<CacheServiceServer<CacheServer> as tonic::server::NamedService>::NAME],
    )
}

/// The service's routes (it has no background work).
///
/// # Errors
/// None; the signature matches the other services.
#[allow(clippy::unused_async)]
pub async fn domain(
    config: &Config,
    _common: &Common,
    _runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let (routes, grpc_names) = routes(config.limits);
    Ok(Domain {
        routes,
        grpc_names,
        ..Domain::default()
    })
}
