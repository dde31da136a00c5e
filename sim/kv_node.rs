//! The simulated NATS server node: the modelled key-value bucket
//! (`streamgate_testkit::kv_node`) on a node of its own, reached by the
//! NATS KV registry over madsim's network. Checked here: the model meets
//! the same bucket contract as the real server (`tests/nats_kv_registry.rs`),
//! and the registry on it meets the registry contract; the swarm runs it
//! as the registry on half its seeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::registry::Registry;
use streamgate::registry::consul::SimTransport;
use streamgate::registry::nats_kv::bucket::{Bucket, Status};
use streamgate::registry::nats_kv::http::HttpBucket;
use streamgate::registry::nats_kv::{NatsKvRegistry, Options};
use streamgate::rt;
use streamgate_testkit::kv_node::KvNode;

use crate::trace::announce;

/// The registry's settings in the simulator (the defaults but the URL).
fn options(addr: SocketAddr) -> Options {
    Options::new(format!("http://{addr}"))
}

/// A fresh modelled server whose bucket has the registry's settings.
pub fn node() -> Arc<KvNode> {
    let opts = Options::default();
    KvNode::new(Status {
        max_age_ms: u64::try_from(opts.max_age.as_millis()).unwrap_or(u64::MAX),
        history: opts.history,
    })
}

/// A bucket client of the node at `addr`.
pub fn bucket(addr: SocketAddr) -> Arc<dyn Bucket> {
    Arc::new(HttpBucket::new(format!("http://{addr}"), SimTransport))
}

/// The NATS KV registry on the node at `addr`.
pub fn registry(addr: SocketAddr) -> Arc<dyn Registry> {
    Arc::new(NatsKvRegistry::assuming(options(addr), bucket(addr)).expect("valid options"))
}

/// Serves `node` at `addr` until this node is killed; what it holds
/// outlives a restart.
pub async fn serve(node: Arc<KvNode>, addr: SocketAddr) {
    crate::common::serve_http(addr, node.router(), "the modelled NATS node").await;
}

const ADDR: ([u8; 4], u16) = ([10, 0, 4, 1], 4222);

/// The scenario's own node, to run its client on.
fn client_node() -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name("client")
        .ip([10, 0, 4, 2].into())
        .build()
}

fn start_node() -> Arc<KvNode> {
    let node = self::node();
    let served = node.clone();
    let addr = SocketAddr::from(ADDR);
    Handle::current()
        .create_node()
        .name("nats")
        .ip(addr.ip())
        .init(move || serve(served.clone(), addr))
        .build();
    node
}

#[madsim::test]
async fn the_modelled_bucket_meets_the_kv_contract() {
    let _progress = announce("the_modelled_bucket_meets_the_kv_contract");
    let node = start_node();
    client_node()
        .spawn(async move {
            rt::sleep(Duration::from_millis(50)).await;
            let lose: streamgate_testkit::kv_contract::Lose = Arc::new(move || {
                node.wipe();
                Box::pin(async {})
            });
            streamgate_testkit::kv_contract::run_all(bucket(ADDR.into()), lose).await;
        })
        .await
        .expect("contract");
}

#[madsim::test]
async fn the_nats_kv_registry_on_the_modelled_node_meets_the_registry_contract() {
    let _progress =
        announce("the_nats_kv_registry_on_the_modelled_node_meets_the_registry_contract");
    start_node();
    client_node()
        .spawn(async {
            rt::sleep(Duration::from_millis(50)).await;
            let opts = streamgate_testkit::registry_contract::Options {
                ttl_interval: Duration::from_secs(1),
                expiry_slack: Duration::from_millis(500),
                set_status: None,
            };
            streamgate_testkit::registry_contract::run_all(registry(ADDR.into()), opts).await;
        })
        .await
        .expect("contract");
}
