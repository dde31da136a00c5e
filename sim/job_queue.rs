//! The worker's JetStream job store inside the simulator: the modelled
//! work queue (`streamgate_testkit::queue_node`) and a modelled bucket for
//! the job records (`streamgate_testkit::kv_node`) on one node of their
//! own, reached over madsim's network. Checked here: the model meets the
//! same queue contract as the real server (`tests/nats_job_queue.rs`), and
//! the store on it meets the job store contract as on the real server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::registry::consul::SimTransport;
use streamgate::registry::nats_kv::bucket::Status;
use streamgate::registry::nats_kv::http::HttpBucket;
use streamgate::rt;
use streamgate::services::worker::store::Store;
use streamgate::services::worker::store::jetstream::JetStreamStore;
use streamgate::services::worker::store::jetstream::http::HttpQueue;
use streamgate_testkit::kv_node::KvNode;
use streamgate_testkit::queue_node::{QueueNode, QueueSettings};

use crate::trace::announce;

/// The jobs' bucket and work queue on one modelled server.
#[derive(Debug, Clone)]
pub struct JobsNode {
    /// The job records.
    pub records: Arc<KvNode>,
    /// The dispatch queue.
    pub queue: Arc<QueueNode>,
}

impl JobsNode {
    /// A fresh server: an empty bucket (history 1) and an empty work queue
    /// on `<name>.dispatch.*` holding `max_active`, with this ack wait.
    pub fn new(name: &str, max_active: u64, ack_wait: Duration) -> Self {
        Self {
            records: KvNode::new(Status {
                max_age_ms: 0,
                history: 1,
            }),
            queue: QueueNode::new(QueueSettings {
                subjects: format!("{name}.dispatch.*"),
                max_messages: max_active,
                ack_wait_ms: u64::try_from(ack_wait.as_millis()).unwrap_or(u64::MAX),
                max_ack_pending: max_active,
            }),
        }
    }

    /// Serves both at `addr` until this node is killed; what they hold
    /// outlives a restart.
    pub async fn serve(self, addr: SocketAddr) {
        let router = self.records.router().merge(self.queue.router());
        crate::common::serve_http(addr, router, "the modelled NATS node").await;
    }
}

/// A job store named `name` on the node at `addr`.
pub fn store(name: &str, addr: SocketAddr) -> Store {
    let base = format!("http://{addr}");
    Store::JetStream(JetStreamStore::on(
        name,
        Arc::new(HttpBucket::new(base.clone(), SimTransport)),
        Arc::new(HttpQueue::new(base, SimTransport)),
    ))
}

const ADDR: ([u8; 4], u16) = ([10, 0, 5, 1], 4222);

fn start(node: &JobsNode) {
    let served = node.clone();
    let addr = SocketAddr::from(ADDR);
    Handle::current()
        .create_node()
        .name("nats")
        .ip(addr.ip())
        .init(move || served.clone().serve(addr))
        .build();
}

/// A node of the scenario's own at 10.0.5.`last`, to run a client on.
fn client_node(last: u8) -> madsim::runtime::NodeHandle {
    Handle::current()
        .create_node()
        .name(format!("client-{last}"))
        .ip([10, 0, 5, last].into())
        .build()
}

#[madsim::test]
async fn the_modelled_work_queue_meets_the_queue_contract() {
    use streamgate_testkit::queue_contract as qc;
    let _progress = announce("the_modelled_work_queue_meets_the_queue_contract");
    let name = "contract";
    start(&JobsNode::new(name, qc::MAX_MESSAGES, qc::ACK_WAIT));
    client_node(2)
        .spawn(async move {
            rt::sleep(Duration::from_millis(50)).await;
            let queue = HttpQueue::new(format!("http://{}", SocketAddr::from(ADDR)), SimTransport);
            qc::run_all(qc::Queue {
                queue: &queue,
                name,
            })
            .await;
        })
        .await
        .expect("contract");
}

#[madsim::test]
async fn the_jetstream_store_on_the_modelled_node_meets_the_job_store_contract() {
    use streamgate_testkit::job_store_contract as contract;
    let _progress =
        announce("the_jetstream_store_on_the_modelled_node_meets_the_job_store_contract");
    for (i, check) in ["submissions", "lists"].into_iter().enumerate() {
        let name = format!("jobs{i}");
        let node = JobsNode::new(&name, contract::MAX_ACTIVE, Duration::from_secs(60));
        // One server per check, each on an address of its own.
        let last = 10 + u8::try_from(i).unwrap_or(0);
        let addr = SocketAddr::from(([10, 0, 5, last], 4222));
        let served = node.clone();
        Handle::current()
            .create_node()
            .name(format!("nats-{check}"))
            .ip(addr.ip())
            .init(move || served.clone().serve(addr))
            .build();
        client_node(last + 10)
            .spawn(async move {
                rt::sleep(Duration::from_millis(50)).await;
                let store = store(&name, addr);
                match check {
                    "submissions" => {
                        contract::submissions_deduplicate_and_respect_the_limit(&store).await;
                    }
                    _ => contract::lists_page_newest_first_with_filters(&store).await,
                }
            })
            .await
            .expect("contract");
    }
}
