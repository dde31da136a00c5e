//! What every simulated node of a scenario shares: the service-token keys
//! (as an operator would distribute them) and the pool settings.

use streamgate::client::PoolConfig;
use streamgate::middleware::auth::{Key, Keyring};

/// The cluster's service-token keys (fixed: this is test data).
pub fn keys() -> Keyring {
    Keyring::new(Key::new("sim", &[7; 32]).expect("valid key"))
}

/// Serves `router` (a modelled server's HTTP API) at `addr` on this node
/// until the node is killed.
pub async fn serve_http(addr: std::net::SocketAddr, router: axum::Router, what: &str) {
    use streamgate::rt::transport;
    let listener = transport::Listener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("{what} binds {addr}: {e}"));
    transport::serve(
        listener,
        tonic::service::Routes::from(router),
        tower::layer::util::Identity::new(),
        std::future::pending(),
    )
    .await
    .unwrap_or_else(|e| panic!("{what} serves: {e}"));
}

/// Pool settings of a node calling as `identity`.
pub fn pool(identity: &str) -> PoolConfig {
    PoolConfig::new(keys(), identity)
}

/// Starts `ips.len()` cache nodes, each running the cache service through
/// the kernel, registered in the shared `registry` with TTL `check_interval`.
/// A restarted node starts its service again. Returns the node ids.
pub fn cache_nodes(
    registry: &std::sync::Arc<streamgate::registry::memory::MemoryRegistry>,
    ips: &[std::net::IpAddr],
    check_interval: std::time::Duration,
) -> Vec<madsim::task::NodeId> {
    use std::sync::Arc;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::kernel::{Kernel, Plugin, Seams};
    use streamgate::services::{Common, ServiceConfig};
    use streamgate::services::{ServiceKind, ServicePlugin};

    let handle = madsim::runtime::Handle::current();
    ips.iter()
        .enumerate()
        .map(|(i, &ip)| {
            let registry = registry.clone();
            handle
                .create_node()
                .name(format!("cache-{i}"))
                .ip(ip)
                .init(move || {
                    let registry = registry.clone();
                    async move {
                        let common = Common {
                            check_interval,
                            ..Common::new(ServiceKind::Cache, ip)
                        };
                        let config = ServiceConfig::new(ServiceKind::Cache);
                        let plugins: Vec<Box<dyn Plugin>> =
                            vec![Box::new(ServicePlugin::new(common, config))];
                        let _kernel = Kernel::start_with(
                            Seams::new(Arc::new(MemoryBus::new()), registry),
                            pool("cache"),
                            plugins,
                        )
                        .await
                        .expect("kernel starts");
                        std::future::pending::<()>().await;
                    }
                })
                .build()
                .id()
        })
        .collect()
}
