//! The simulated cluster: every one of the nine services on its own node
//! (two instances of the stateless ones), a Consul agent model or a
//! modelled NATS server (the run's [`RegistryKind`]) as the registry node,
//! a broker node as the bus and, when the run's job queue is JetStream
//! ([`JobQueueKind`]), a modelled NATS node for the jobs shared by two
//! workers, and when the run's database is shared ([`DatabaseKind`]) a
//! modelled database node for two instances each of metadata, upload and
//! auth and an object-store node for the blobs; each
//! service started through
//! the same kernel and `start()` as in production, calling the others
//! over mutual TLS with a certificate of the cluster CA (`certs.rs`) or
//! with service tokens (the run's [`IdentityKind`]). A node that fails to
//! start (registry down, say) tries again each second, as a supervisor would
//! restart it; a restarted node starts afresh, keeping only its data dir.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use madsim::task::NodeId;
use streamgate::blob::BlobStore;
use streamgate::blob::memory::MemoryBlobStore;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::registry::Registry;
use streamgate::registry::consul::SimTransport;
use streamgate::rt;
use streamgate::schema::DatabaseUrl;
use streamgate::services::auth::Secret;
use streamgate::services::auth::remote::AccountsDb;
use streamgate::services::metadata::remote::CatalogDb;
use streamgate::services::transcoder::Engine;
use streamgate::services::upload::remote::RecordsDb;
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};
use streamgate_testkit::kv_node::KvNode;
use streamgate_testkit::object_node::{ObjectNode, RemoteBlobs};

use super::certs::{self, Ca};
use super::check;
use super::disk_faults::FaultyBlobs;
use super::faults::{DatabaseKind, IdentityKind, JobQueueKind, Plan, RegistryKind};
use super::timeline::{Kind, Timeline};
use crate::broker::{SimBus, broker_node};

/// The broker node's address.
pub const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 1)), 4222);
/// The modelled NATS node holding the jobs' bucket and work queue, when
/// the run's job queue is JetStream.
pub const JOBS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 5)), 4222);
/// The modelled database node shared by the metadata, upload and auth
/// instances (the catalog, the upload records, the accounts), when the
/// run's database is [`DatabaseKind::Shared`].
pub const DATABASE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 6)), 5432);
/// The object-store node holding every blob, when the run's database is
/// [`DatabaseKind::Shared`] (else the services share the store in memory).
pub const OBJECTS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 9, 7)), 9000);
/// The name of the jobs' work queue (`<name>.dispatch.*`).
const JOBS_NAME: &str = "jobs";
/// The workers' lease, and the work queue's ack wait, when the job queue is
/// JetStream: shorter than the longer partitions and crashes (up to 8 s),
/// so a worker cut off while it runs a job loses the job's message to the
/// other worker, and both may run one attempt.
pub const JOBS_LEASE: Duration = Duration::from_secs(4);
/// The client (workload and checkers) node's address.
pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 2));
/// The stalled client's node address (`stalled.rs`): another client
/// address than the user's, as the gateways' per-client budgets see it.
pub const STALLED: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 3));
/// The intruder's node address (`intruder.rs`).
pub const INTRUDER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 9, 4));
/// The gateways' requests in flight: the production defaults scaled by a
/// quarter (API budget 64, a client's share 16; media as deployed), so
/// the stalled client (`stalled.rs`) overruns the budget with a quarter of
/// the requests, and a quarter of the simulation's cost, that the
/// defaults would need. The user's requests go one at a time.
pub const GATEWAY_LIMITS: streamgate::services::gateway::limit::RequestLimits = {
    use streamgate::services::gateway::limit::RequestLimits as L;
    L {
        api_in_flight: L::API_IN_FLIGHT / 4,
        client_api_in_flight: L::CLIENT_API_IN_FLIGHT / 4,
        media_in_flight: L::MEDIA_IN_FLIGHT,
        client_media_in_flight: L::CLIENT_MEDIA_IN_FLIGHT,
        account_api_in_flight: L::ACCOUNT_API_IN_FLIGHT,
        account_media_in_flight: L::ACCOUNT_MEDIA_IN_FLIGHT,
        body_timeout: L::BODY_TIMEOUT,
    }
};
/// TTL check interval of every registration (critical after 2x).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The upload service's orphan sweep: often, with a short grace when one
/// upload instance runs (a blob it is committing is never touched by its
/// own sweep), and with two (on the shared database) a grace longer than
/// an upload's commit may take (`COMMIT_TIMEOUT`), as the sweep's rule
/// asks of instances sharing a blob store.
pub fn orphan_sweep(shared_db: bool) -> streamgate::services::upload::sweep::Config {
    streamgate::services::upload::sweep::Config {
        interval: Duration::from_secs(5),
        grace: if shared_db {
            streamgate::services::upload::server::COMMIT_TIMEOUT + Duration::from_secs(5)
        } else {
            Duration::from_secs(20)
        },
    }
}

/// The services and how many instances of each.
const LAYOUT: [(ServiceKind, u8); 9] = [
    (ServiceKind::Metadata, 1),
    (ServiceKind::Upload, 1),
    (ServiceKind::Worker, 1),
    (ServiceKind::Auth, 1),
    (ServiceKind::Monitor, 1),
    (ServiceKind::Transcoder, 2),
    (ServiceKind::Streaming, 2),
    (ServiceKind::Cache, 2),
    (ServiceKind::ApiGateway, 2),
];

/// One service node.
#[derive(Debug, Clone)]
pub struct Member {
    /// `<service>-<i>`: its lane on the timeline.
    pub name: String,
    /// The service it runs.
    pub kind: ServiceKind,
    /// Its address.
    pub ip: IpAddr,
    /// The simulator's id.
    pub id: NodeId,
    /// Its disk: where a stateful service keeps its SQLite files.
    pub data_dir: Option<PathBuf>,
    /// Its certificate, when the run's services use mutual TLS.
    pub tls: Option<streamgate::rt::transport::Mtls>,
}

/// The running cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Every service node.
    pub members: Vec<Member>,
    /// The registry node.
    pub agent: NodeId,
    /// The modelled NATS server's state when the registry is NATS KV
    /// (outside the node: it survives the node's restarts).
    pub kv: Option<Arc<KvNode>>,
    /// The broker node.
    pub broker: NodeId,
    /// The modelled NATS node of the jobs, when the job queue is JetStream
    /// (its state lives outside the node and outlives its restarts).
    pub jobs: Option<NodeId>,
    /// The shared database node, when the run's catalog is on one.
    pub db: Option<NodeId>,
    /// That node's state (outside the node: its commits outlive a crash).
    pub catalog_db: Option<Arc<CatalogDb>>,
    /// The object-store node, on the same seeds.
    pub objects: Option<NodeId>,
    /// The blob store every node shares (object storage).
    pub blobs: MemoryBlobStore,
    /// The cluster CA, when the run's services use mutual TLS.
    pub ca: Option<Ca>,
}

impl Cluster {
    /// A client of the run's registry.
    pub fn registry(&self) -> Arc<dyn Registry> {
        registry_client(self.kv.is_some())
    }

    /// The gateways' HTTP addresses.
    pub fn gateways(&self) -> Vec<SocketAddr> {
        self.members
            .iter()
            .filter(|m| m.kind == ServiceKind::ApiGateway)
            .map(|m| SocketAddr::new(m.ip, ServiceKind::ApiGateway.default_port()))
            .collect()
    }
}

/// Where a stateful service keeps its SQLite files in this run (real files:
/// they survive a node's restart, as a disk would; each seed has its own).
fn data_root(seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!("streamgate-swarm-{}-{seed}", std::process::id()))
}

fn stateful(kind: ServiceKind) -> bool {
    matches!(
        kind,
        ServiceKind::Metadata | ServiceKind::Upload | ServiceKind::Worker | ServiceKind::Auth
    )
}

/// Starts the registry node, the broker node and every service node.
pub fn start(timeline: &Timeline, plan: &Plan) -> Cluster {
    let handle = Handle::current();
    let root = data_root(handle.seed());
    let _ = std::fs::remove_dir_all(&root);
    streamgate::rt::faults::clear_disk_faults();
    let kv = (plan.registry == RegistryKind::NatsKv).then(crate::kv_node::node);
    let served = kv.clone();
    let agent = handle
        .create_node()
        .name("registry")
        .ip(crate::registry::AGENT.ip())
        .init(move || {
            let served = served.clone();
            async move {
                match served {
                    Some(node) => crate::kv_node::serve(node, crate::registry::AGENT).await,
                    None => crate::registry::serve_agent().await,
                }
            }
        })
        .build()
        .id();
    let nats_kv = kv.is_some();
    let broker = broker_node(BROKER);
    let jetstream = plan.job_queue == JobQueueKind::JetStream;
    let jobs = jetstream.then(|| {
        let defaults = streamgate::services::worker::jobs::Config::default();
        let node = crate::job_queue::JobsNode::new(JOBS_NAME, defaults.max_active, JOBS_LEASE);
        handle
            .create_node()
            .name("nats-jobs")
            .ip(JOBS.ip())
            .init(move || node.clone().serve(JOBS))
            .build()
            .id()
    });
    let shared_db = plan.database == DatabaseKind::Shared;
    let catalog_db = shared_db.then(|| CatalogDb::new().expect("an in-memory database"));
    let others = shared_db.then(|| {
        (
            RecordsDb::new().expect("an in-memory database"),
            AccountsDb::new().expect("an in-memory database"),
        )
    });
    let db = catalog_db
        .clone()
        .zip(others)
        .map(|(state, (records, accounts))| {
            handle
                .create_node()
                .name("database")
                .ip(DATABASE.ip())
                .init(move || {
                    let (state, records, accounts) =
                        (state.clone(), records.clone(), accounts.clone());
                    async move {
                        // Back from a crash: what was committed is there, the
                        // open transactions are gone.
                        state.restarted();
                        let router = state
                            .router()
                            .merge(records.router())
                            .merge(accounts.router());
                        crate::common::serve_http(DATABASE, router, "the database node").await;
                    }
                })
                .build()
                .id()
        });
    let blobs = MemoryBlobStore::new();
    // On shared-database seeds the blobs live on an object-store node of
    // their own, as in S3-compatible storage (the same memory store is its
    // state, outside the node: what it stored outlives a crash).
    let objects = shared_db.then(|| {
        let state = ObjectNode::new(Arc::new(blobs.clone()));
        handle
            .create_node()
            .name("objects")
            .ip(OBJECTS.ip())
            .init(move || {
                let state = state.clone();
                async move {
                    state.restarted();
                    crate::common::serve_http(OBJECTS, state.router(), "the object store").await;
                }
            })
            .build()
            .id()
    });
    let engine = Engine::Model {
        duration: plan.transcode_time,
        failure_rate: plan.transcode_failure_rate,
    };
    let ca = (plan.identity == IdentityKind::Mtls).then(|| Ca::new(certs::CA));
    let mut members = Vec::new();
    let mut last = 10u8;
    let skip = std::env::var("SWARM_SKIP").unwrap_or_default();
    for (kind, count) in LAYOUT {
        if skip.split(',').any(|k| k == kind.name()) {
            continue;
        }
        // Workers on JetStream share their jobs as on two hosts: two of
        // them race for every lease.
        // So do metadata, upload and auth instances on a shared database.
        let on_db = shared_db
            && matches!(
                kind,
                ServiceKind::Metadata | ServiceKind::Upload | ServiceKind::Auth
            );
        let count = if (kind == ServiceKind::Worker && jetstream) || on_db {
            2
        } else {
            count
        };
        for i in 0..count {
            let name = format!("{}-{i}", kind.name());
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 9, last));
            last += 1;
            // An instance on the shared database keeps nothing on its own
            // disk.
            let data_dir = (stateful(kind) && !on_db && std::env::var_os("SWARM_NODISK").is_none())
                .then(|| root.join(&name));
            let dir = data_dir.clone();
            let tls = ca.as_ref().map(|ca| ca.identity(kind.name()));
            let member_tls = tls.clone();
            let (tl, blobs, engine, lane) = (
                timeline.clone(),
                blobs.clone(),
                engine.clone(),
                name.clone(),
            );
            let id = handle
                .create_node()
                .name(&name)
                .ip(ip)
                .init(move || {
                    let (tl, blobs, engine, lane, data_dir, tls) = (
                        tl.clone(),
                        blobs.clone(),
                        engine.clone(),
                        lane.clone(),
                        data_dir.clone(),
                        tls.clone(),
                    );
                    async move {
                        let common = Common {
                            check_interval: CHECK_INTERVAL,
                            data_dir,
                            ..Common::new(kind, ip)
                        };
                        let mut config = ServiceConfig::new(kind);
                        match &mut config {
                            ServiceConfig::Transcoder(c) => c.engine = engine,
                            ServiceConfig::Auth(c) => {
                                c.secret = Some(Secret::new(vec![9u8; 32]));
                                if on_db {
                                    c.database =
                                        Some(DatabaseUrl::new(format!("http://{DATABASE}")));
                                }
                            }
                            ServiceConfig::Upload(c) => {
                                c.sweep = orphan_sweep(shared_db);
                                if on_db {
                                    c.database =
                                        Some(DatabaseUrl::new(format!("http://{DATABASE}")));
                                }
                            }
                            ServiceConfig::ApiGateway(c) => c.limits = GATEWAY_LIMITS,
                            ServiceConfig::Metadata(c) if on_db => {
                                c.database = Some(DatabaseUrl::new(format!("http://{DATABASE}")));
                            }
                            ServiceConfig::Worker(c) if jetstream => {
                                c.job_queue = streamgate::services::worker::JobQueue::JetStream {
                                    url: format!("http://{JOBS}"),
                                    name: JOBS_NAME.to_owned(),
                                };
                                c.jobs.lease = JOBS_LEASE;
                            }
                            _ => {}
                        }
                        loop {
                            let plugins: Vec<Box<dyn Plugin>> =
                                vec![Box::new(ServicePlugin::new(common.clone(), config.clone()))];
                            let seams = Seams {
                                bus: Arc::new(SimBus::new(BROKER)),
                                registry: registry_client(nats_kv),
                                blobs: Arc::new(FaultyBlobs(shared_blobs(shared_db, &blobs))),
                            };
                            let pool = streamgate::client::PoolConfig {
                                tls: tls.clone(),
                                ..check::pool_config(&lane, kind.name(), &tl)
                            };
                            match Kernel::start_with(seams, pool, plugins).await {
                                Ok(kernel) => {
                                    tl.record(&lane, Kind::State, "started");
                                    std::future::pending::<()>().await;
                                    drop(kernel);
                                }
                                Err(e) => {
                                    tl.record(
                                        &lane,
                                        Kind::State,
                                        format_args!("start failed: {e}"),
                                    );
                                    rt::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                    }
                })
                .build()
                .id();
            members.push(Member {
                name,
                kind,
                ip,
                id,
                data_dir: dir,
                tls: member_tls,
            });
        }
    }
    Cluster {
        members,
        agent,
        kv,
        broker,
        jobs,
        db,
        catalog_db,
        objects,
        blobs,
        ca,
    }
}

/// The blob store a service node uses: the object-store node on
/// shared-database seeds, else the memory store itself.
fn shared_blobs(shared_db: bool, blobs: &MemoryBlobStore) -> Arc<dyn BlobStore> {
    if shared_db {
        Arc::new(RemoteBlobs::new(
            &format!("http://{OBJECTS}"),
            Arc::new(SimTransport),
        ))
    } else {
        Arc::new(blobs.clone())
    }
}

/// A client of the registry node: the NATS KV registry or the Consul one.
fn registry_client(nats_kv: bool) -> Arc<dyn Registry> {
    if nats_kv {
        crate::kv_node::registry(crate::registry::AGENT)
    } else {
        crate::registry::consul()
    }
}

/// Removes the data dirs of the run of `seed`.
pub fn clean_up(seed: u64) {
    let _ = std::fs::remove_dir_all(data_root(seed));
}
