//! cache (9006): a byte-bounded TTL cache over gRPC.

use tonic::service::Routes;

use crate::proto::cache_service_server::CacheServiceServer;

pub mod server;
pub mod state;

pub use server::CacheServer;

/// The gRPC routes of one cache instance.
#[must_use]
pub fn routes(limits: state::Limits) -> (Routes, Vec<&'static str>) {
    let svc = CacheServiceServer::new(CacheServer::new(limits));
    (
        Routes::new(svc),
        vec![<CacheServiceServer<CacheServer> as tonic::server::NamedService>::NAME],
    )
}
