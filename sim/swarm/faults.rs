//! Swarm testing: the seed decides which kinds of fault are on in this run
//! and how often they strike, so that across seeds every combination is
//! tried, including the quiet ones where a rare fault gets room to matter.
//! The injector then strikes at random times during the safety phase, and
//! every fault is healed by the end of it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use streamgate::rt;
use streamgate::services::ServiceKind;

use super::cluster::Cluster;
use super::disk::Snapshot;
use super::disk_faults;
use super::timeline::{Kind, Timeline};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A service node crashes and restarts later. Its data dir survives as
    /// the crash left it; half the time it also loses what it had written
    /// but not flushed (see `disk.rs`).
    Crash,
    /// A service node is cut off from every other node.
    Partition,
    /// One direction of the link between two service nodes drops everything.
    Clog,
    /// Packets are lost everywhere.
    Loss,
    /// Every packet is slow.
    Latency,
    /// The registry restarts with its data wiped.
    RegistryWipe,
    /// The registry is down for a while (and comes back empty).
    RegistryOutage,
    /// The broker is down for a while (events published meanwhile are lost).
    BrokerOutage,
    /// A stateful node's disk is full for a while (`disk_faults.rs`).
    DiskFull,
    /// A stateful node's disk fails every operation for a while.
    DiskFailing,
    /// A stateful node's disk is slow for a while.
    DiskSlow,
    /// The shared database node crashes (its open transactions are lost;
    /// its commits stay) or is cut off, for a while: on the seeds whose
    /// metadata, upload and auth instances share it ([`DatabaseKind::Shared`]).
    DatabaseOutage,
    /// The object-store node crashes (its uploads in progress are lost;
    /// what it stored stays) or is cut off, for a while: on the same seeds.
    ObjectStoreOutage,
}

/// Every fault kind.
pub const ALL: [Fault; 13] = [
    Fault::Crash,
    Fault::Partition,
    Fault::Clog,
    Fault::Loss,
    Fault::Latency,
    Fault::RegistryWipe,
    Fault::RegistryOutage,
    Fault::BrokerOutage,
    Fault::DiskFull,
    Fault::DiskFailing,
    Fault::DiskSlow,
    Fault::DatabaseOutage,
    Fault::ObjectStoreOutage,
];

/// A fault kind as the property report names it.
pub fn name(f: Fault) -> String {
    format!("fault: {f:?}")
}

/// `SWARM_FAULTS=crash,clog,...` (or `none`) keeps only those kinds of
/// what the seed drew: to see whether a failure needs the others.
fn only(drawn: Vec<Fault>) -> Vec<Fault> {
    let Ok(kept) = std::env::var("SWARM_FAULTS") else {
        return drawn;
    };
    let kept: Vec<String> = kept.split(',').map(|k| k.trim().to_lowercase()).collect();
    drawn
        .into_iter()
        .filter(|f| kept.contains(&format!("{f:?}").to_lowercase()))
        .collect()
}

/// What this run's seed switched on.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Fault kinds that strike in this run.
    pub faults: Vec<Fault>,
    /// Mean time between two faults.
    pub gap: Duration,
    /// Simulated time one transcode takes.
    pub transcode_time: Duration,
    /// Share of transcode attempts that fail.
    pub transcode_failure_rate: f64,
    /// buggify points forced on now and then (short deadlines, dropped
    /// acks, duplicated and reordered events).
    pub buggify: bool,
    /// Seeds the fault schedule's own generator.
    pub schedule: u64,
    /// A client keeps more requests with stalled or trickled bodies open on
    /// every gateway than its API budget takes (`stalled.rs`);
    /// `SWARM_STALLED=on|off` overrides the draw.
    pub stalled_clients: bool,
    /// Which registry the services use: even seeds the Consul agent
    /// model, odd seeds the NATS KV registry on the modelled NATS node
    /// (not drawn from the generator, so the rest of a seed's plan is the
    /// same in both); `SWARM_REGISTRY=consul|nats-kv` overrides it.
    pub registry: RegistryKind,
    /// Where the worker keeps its jobs: SQLite on seeds whose second bit is
    /// clear, the JetStream store on the modelled NATS node otherwise (so
    /// every four seeds run each registry with each job queue; not drawn
    /// from the generator either); `SWARM_JOB_QUEUE=sqlite|jetstream`
    /// overrides it.
    pub job_queue: JobQueueKind,
    /// How services know each other: mutual TLS with modelled certificates
    /// (renewed while the run goes on) on seeds whose third bit is clear,
    /// service tokens otherwise (not drawn from the generator);
    /// `SWARM_IDENTITY=mtls|tokens` overrides it.
    pub identity: IdentityKind,
    /// Where the catalog, the upload records and the accounts live: SQLite
    /// in the data dir of the one metadata, upload and auth instance on
    /// seeds whose fourth bit is clear, else a modelled database node shared by two
    /// instances of each (not drawn from the generator);
    /// `SWARM_DATABASE=sqlite|shared` overrides it.
    pub database: DatabaseKind,
}

/// Where a run's catalog, upload records and accounts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// SQLite in the metadata, upload and auth instances' data dirs.
    Sqlite,
    /// The modelled database node (`services::metadata::remote`,
    /// `services::upload::remote`, `services::auth::remote`), shared by two
    /// instances of each, as
    /// PostgreSQL is when they scale out.
    Shared,
}

impl DatabaseKind {
    /// The run's database: from the seed's fourth bit, or `SWARM_DATABASE`.
    pub fn of_seed(seed: u64) -> Self {
        match std::env::var("SWARM_DATABASE").as_deref() {
            Ok("sqlite") => Self::Sqlite,
            Ok("shared") => Self::Shared,
            _ if (seed / 8).is_multiple_of(2) => Self::Sqlite,
            _ => Self::Shared,
        }
    }

    /// Its name in the timeline and in `SWARM_DATABASE`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Shared => "shared",
        }
    }
}

/// How a run's services prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// Mutual TLS: each node's certificate of the cluster CA
    /// (`certs.rs`), as microservices mode runs by default.
    Mtls,
    /// Plaintext with HMAC service tokens (`--allow-plaintext`).
    Tokens,
}

impl IdentityKind {
    /// The run's identities: from the seed's third bit, or `SWARM_IDENTITY`.
    pub fn of_seed(seed: u64) -> Self {
        match std::env::var("SWARM_IDENTITY").as_deref() {
            Ok("mtls") => Self::Mtls,
            Ok("tokens") => Self::Tokens,
            _ if (seed / 4).is_multiple_of(2) => Self::Mtls,
            _ => Self::Tokens,
        }
    }

    /// Its name in the timeline and in `SWARM_IDENTITY`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mtls => "mtls",
            Self::Tokens => "tokens",
        }
    }
}

/// The job store a run's worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobQueueKind {
    /// SQLite in the worker's data dir.
    Sqlite,
    /// The JetStream store on the modelled NATS node's bucket and work
    /// queue (which outlive a restart, as JetStream's file storage does).
    JetStream,
}

impl JobQueueKind {
    /// The run's job queue: from the seed's second bit, or `SWARM_JOB_QUEUE`.
    pub fn of_seed(seed: u64) -> Self {
        match std::env::var("SWARM_JOB_QUEUE").as_deref() {
            Ok("sqlite") => Self::Sqlite,
            Ok("jetstream") => Self::JetStream,
            _ if (seed / 2).is_multiple_of(2) => Self::Sqlite,
            _ => Self::JetStream,
        }
    }

    /// Its name in the timeline and in `SWARM_JOB_QUEUE`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::JetStream => "jetstream",
        }
    }
}

/// The registry a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryKind {
    /// `ConsulRegistry` on the Consul agent model (comes back empty after a restart).
    Consul,
    /// `NatsKvRegistry` on the modelled NATS node (its bucket outlives a
    /// restart, as JetStream's file storage does; a wipe loses it).
    NatsKv,
}

impl RegistryKind {
    /// The run's registry: from the seed's parity, or `SWARM_REGISTRY`.
    pub fn of_seed(seed: u64) -> Self {
        match std::env::var("SWARM_REGISTRY").as_deref() {
            Ok("consul") => Self::Consul,
            Ok("nats-kv") => Self::NatsKv,
            _ if seed.is_multiple_of(2) => Self::Consul,
            _ => Self::NatsKv,
        }
    }

    /// Its name in the timeline and in `SWARM_REGISTRY`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Consul => "consul",
            Self::NatsKv => "nats-kv",
        }
    }
}

impl Plan {
    /// Draws a plan from the run's seed: each fault kind on with
    /// probability 1/2.
    pub fn draw() -> Self {
        let mut rng = rt::rng();
        let database = DatabaseKind::of_seed(madsim::runtime::Handle::current().seed());
        let mut faults: Vec<Fault> = ALL.into_iter().filter(|_| rng.gen_bool(0.5)).collect();
        // The shared stores' outages need the shared stores (drawn anyway,
        // so the rest of the plan does not depend on the database kind).
        if database == DatabaseKind::Sqlite {
            faults.retain(|f| !matches!(f, Fault::DatabaseOutage | Fault::ObjectStoreOutage));
        }
        let slow = rng.gen_bool(0.5);
        let faults = only(faults);
        Self {
            faults,
            gap: Duration::from_millis(rng.gen_range(800..4_000)),
            transcode_time: Duration::from_millis(if slow {
                rng.gen_range(5_000..15_000)
            } else {
                rng.gen_range(500..3_000)
            }),
            transcode_failure_rate: [0.0, 0.1, 0.3][rng.gen_range(0..3)],
            buggify: rng.gen_bool(0.5),
            schedule: rng.r#gen(),
            // Drawn whatever the override says, so that the rest of the
            // seed's run stays the same with it.
            stalled_clients: match (rng.gen_bool(0.5), std::env::var("SWARM_STALLED").as_deref()) {
                (_, Ok("on")) => true,
                (_, Ok("off")) => false,
                (drawn, _) => drawn,
            },
            registry: RegistryKind::of_seed(madsim::runtime::Handle::current().seed()),
            job_queue: JobQueueKind::of_seed(madsim::runtime::Handle::current().seed()),
            identity: IdentityKind::of_seed(madsim::runtime::Handle::current().seed()),
            database,
        }
    }

    /// One line saying what is on.
    pub fn describe(&self) -> String {
        format!(
            "swarm: registry {}; job queue {}; identities {}; database {}; faults {:?} every ~{:?}; transcodes {:?}, {:.0} % fail; buggify {}; stalled clients {}",
            self.registry.name(),
            self.job_queue.name(),
            self.identity.name(),
            self.database.name(),
            self.faults,
            self.gap,
            self.transcode_time,
            self.transcode_failure_rate * 100.0,
            if self.buggify { "on" } else { "off" },
            if self.stalled_clients { "on" } else { "off" }
        )
    }
}

/// What is broken right now, for the injector and the checkers.
#[derive(Debug, Default)]
pub struct Broken {
    /// Service nodes down.
    pub down: BTreeSet<NodeId>,
    /// Service nodes partitioned away.
    pub cut: BTreeSet<NodeId>,
    /// One-way clogged links.
    pub clogged: BTreeSet<(NodeId, NodeId)>,
    /// The network is lossy or slow.
    pub network: bool,
    /// The registry node is down.
    pub registry_down: bool,
    /// The broker node is down.
    pub broker_down: bool,
    /// The shared database and object-store nodes down or cut off.
    pub stores_down: BTreeSet<&'static str>,
    /// Service nodes with a faulty disk.
    pub disks: BTreeSet<NodeId>,
    /// Faults so far.
    pub count: u32,
    /// When each node (or link end) was last disturbed.
    pub disturbed: Vec<(NodeId, Duration)>,
    /// When the network last misbehaved.
    pub network_disturbed: Option<Duration>,
    /// When the registry last came back (empty).
    pub registry_back: Option<Duration>,
}

impl Broken {
    /// Whether `node` was disturbed (crashed, cut, clogged) at or after `since`.
    pub fn disturbed_since(&self, node: NodeId, since: Duration) -> bool {
        self.down.contains(&node)
            || self.cut.contains(&node)
            || self.clogged.iter().any(|(a, b)| *a == node || *b == node)
            || self
                .disturbed
                .iter()
                .any(|(n, at)| *n == node && *at >= since)
    }
}

/// The shared fault state.
pub type Shared = Arc<Mutex<Broken>>;

fn lock(b: &Shared) -> std::sync::MutexGuard<'_, Broken> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One fault of the schedule, every parameter drawn up front so that the
/// schedule is the same whichever faults a shrinking run leaves out.
#[derive(Debug, Clone, Copy)]
struct Strike {
    fault: Fault,
    /// Index of the first node (victim, or a clogged link's sender).
    a: usize,
    /// Index of the second node (a clogged link's receiver), `!= a`.
    b: usize,
    /// A clog between a gateway and a service it calls (else any pair).
    gateway_link: bool,
    /// Where in its kind's duration range the fault's duration falls, in `[0, 1)`.
    length: f64,
    /// Where in its kind's range the loss rate or latency falls, in `[0, 1)`.
    level: f64,
    /// A crash that also loses the node's unflushed disk writes.
    lossy: bool,
    /// Seeds what a lossy crash loses.
    seed: u64,
}

impl Strike {
    fn draw(plan: &Plan, rng: &mut StdRng, nodes: usize) -> Self {
        let fault = *plan.faults.choose(rng).expect("some fault");
        let a = rng.gen_range(0..nodes);
        let b = (a + rng.gen_range(1..nodes.max(2))) % nodes;
        Self {
            fault,
            a,
            b,
            gateway_link: rng.gen_bool(0.5),
            length: rng.r#gen(),
            level: rng.r#gen(),
            lossy: rng.gen_bool(0.5),
            seed: rng.r#gen(),
        }
    }

    /// A duration in `lo..hi` ms, capped at `left`.
    fn span(&self, lo: u64, hi: u64, left: Duration) -> Duration {
        let ms = lo + ((hi - lo) as f64 * self.length) as u64;
        Duration::from_millis(ms).min(left)
    }
}

/// `SWARM_KEEP=3,9` applies only those faults of the seed's schedule (the
/// others are drawn and left out): what `ci/sim-shrink` narrows a failing
/// schedule down with.
fn kept() -> Option<BTreeSet<u32>> {
    let list = std::env::var("SWARM_KEEP").ok()?;
    Some(
        list.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect(),
    )
}

/// Strikes faults of `plan` until `until` (simulated time since the start
/// of the timeline); every fault heals by then. The schedule (when, which
/// kind, which nodes, how long) comes from the plan's own generator, so it
/// does not depend on what the cluster does meanwhile, and leaving faults
/// out (`SWARM_KEEP`) leaves the others as they were.
pub async fn inject(cluster: Cluster, plan: Plan, tl: Timeline, broken: Shared, until: Duration) {
    if plan.faults.is_empty() {
        return;
    }
    let keep = kept();
    let mut rng = StdRng::seed_from_u64(plan.schedule);
    let handle = Handle::current();
    let net = NetSim::current();
    let mut default_net = None;
    net.update_config(|c| default_net = Some(c.clone()));
    let default_net = default_net.expect("config read");
    let nodes: Vec<NodeId> = cluster.members.iter().map(|m| m.id).collect();
    let gateways: Vec<usize> = (0..nodes.len())
        .filter(|&i| cluster.members[i].kind == ServiceKind::ApiGateway)
        .collect();
    let others: Vec<usize> = (0..nodes.len())
        .filter(|&i| cluster.members[i].kind != ServiceKind::ApiGateway)
        .collect();
    let with_disk: Vec<usize> = (0..nodes.len())
        .filter(|&i| cluster.members[i].data_dir.is_some())
        .collect();
    let lane_of = |id: NodeId| {
        cluster
            .members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| format!("{id}"), |m| m.name.clone())
    };
    // n: the fault's number in the schedule (what `SWARM_KEEP` names).
    for n in 1.. {
        let gap = plan.gap.mul_f64(rng.gen_range(0.2..1.8));
        let strike = Strike::draw(&plan, &mut rng, nodes.len());
        rt::sleep(gap).await;
        let now = tl.elapsed();
        if now >= until {
            return;
        }
        if keep.as_ref().is_some_and(|k| !k.contains(&n)) {
            continue;
        }
        let left = until - now;
        let mut b = lock(&broken);
        b.count += 1;
        streamgate::rt::coverage::hit(&name(strike.fault));
        match strike.fault {
            Fault::Crash => {
                let victim = nodes[strike.a];
                if b.down.contains(&victim) {
                    continue;
                }
                let d = strike.span(500, 8_000, left);
                let member = &cluster.members[strike.a];
                let dir = member.data_dir.clone();
                let mut disk = dir.as_deref().map(Snapshot::take);
                handle.kill(victim);
                let lossy = strike.lossy && disk.is_some();
                let lost = match &mut disk {
                    Some(disk) if lossy => {
                        disk.lose_unflushed(&mut StdRng::seed_from_u64(strike.seed))
                    }
                    _ => String::new(),
                };
                b.down.insert(victim);
                b.disturbed.push((victim, now));
                tl.print(
                    &lane_of(victim),
                    Kind::Fault,
                    format_args!(
                        "#{n} crash for {d:?}{}{lost}",
                        if lossy {
                            ", losing unflushed disk writes"
                        } else {
                            ""
                        }
                    ),
                );
                let (tl, broken, lane) = (tl.clone(), broken.clone(), lane_of(victim));
                rt::spawn(async move {
                    rt::sleep(d).await;
                    if let (Some(disk), Some(dir)) = (&disk, &dir) {
                        disk.restore(dir);
                    }
                    Handle::current().restart(victim);
                    let mut b = lock(&broken);
                    b.down.remove(&victim);
                    b.disturbed.push((victim, tl.elapsed()));
                    tl.print(&lane, Kind::Heal, "restarted");
                });
            }
            Fault::Partition => {
                let victim = nodes[strike.a];
                if !b.cut.insert(victim) {
                    continue;
                }
                let d = strike.span(1_000, 8_000, left);
                // On JetStream seeds half the partitions of a worker cut it
                // from the jobs' NATS node alone: it keeps running what it
                // holds while its lease (4 s) may run out and the other
                // worker take the job over.
                if let Some(jobs) = cluster.jobs
                    && strike.lossy
                    && cluster.members[strike.a].kind == ServiceKind::Worker
                {
                    cut_from_jobs(
                        (victim, lane_of(victim)),
                        jobs,
                        d,
                        n,
                        (&tl, &broken),
                        now,
                        &mut b,
                    );
                    continue;
                }
                net.clog_node(victim);
                b.disturbed.push((victim, now));
                tl.print(
                    &lane_of(victim),
                    Kind::Fault,
                    format_args!("#{n} partitioned for {d:?}"),
                );
                let (tl, broken, lane) = (tl.clone(), broken.clone(), lane_of(victim));
                rt::spawn(async move {
                    rt::sleep(d).await;
                    NetSim::current().unclog_node(victim);
                    let mut b = lock(&broken);
                    b.cut.remove(&victim);
                    b.disturbed.push((victim, tl.elapsed()));
                    tl.print(&lane, Kind::Heal, "partition healed");
                });
            }
            Fault::Clog => {
                // Half the time a gateway's link to a service it calls: the
                // service stays registered (its heartbeats get through), so
                // the gateway's breaker for it must trip, probe and reopen.
                let (from, to) =
                    if strike.gateway_link && !gateways.is_empty() && !others.is_empty() {
                        (
                            nodes[gateways[strike.a % gateways.len()]],
                            nodes[others[strike.b % others.len()]],
                        )
                    } else {
                        (nodes[strike.a], nodes[strike.b])
                    };
                if from == to || !b.clogged.insert((from, to)) {
                    continue;
                }
                let d = strike.span(2_000, 12_000, left);
                net.clog_link(from, to);
                b.disturbed.push((from, now));
                b.disturbed.push((to, now));
                tl.print(
                    &lane_of(from),
                    Kind::Fault,
                    format_args!("#{n} link to {} clogged for {d:?}", lane_of(to)),
                );
                let (tl, broken, lane, other) =
                    (tl.clone(), broken.clone(), lane_of(from), lane_of(to));
                rt::spawn(async move {
                    rt::sleep(d).await;
                    NetSim::current().unclog_link(from, to);
                    let mut b = lock(&broken);
                    b.clogged.remove(&(from, to));
                    let at = tl.elapsed();
                    b.disturbed.push((from, at));
                    b.disturbed.push((to, at));
                    tl.print(&lane, Kind::Heal, format_args!("link to {other} unclogged"));
                });
            }
            Fault::Loss | Fault::Latency => {
                if b.network {
                    continue;
                }
                b.network = true;
                b.network_disturbed = Some(now);
                let d = strike.span(1_000, 6_000, left);
                if strike.fault == Fault::Loss {
                    let rate = 0.01 + 0.09 * strike.level;
                    net.update_config(|c| c.packet_loss_rate = rate);
                    tl.print(
                        "network",
                        Kind::Fault,
                        format_args!("#{n} {:.0} % packet loss for {d:?}", rate * 100.0),
                    );
                } else {
                    let ms = 50 + (450.0 * strike.level) as u64;
                    net.update_config(|c| {
                        c.send_latency = Duration::from_millis(ms / 2)..Duration::from_millis(ms);
                    });
                    tl.print(
                        "network",
                        Kind::Fault,
                        format_args!("#{n} latency up to {ms} ms for {d:?}"),
                    );
                }
                let (tl, broken, restore) = (tl.clone(), broken.clone(), default_net.clone());
                rt::spawn(async move {
                    rt::sleep(d).await;
                    NetSim::current().update_config(|c| *c = restore);
                    let mut b = lock(&broken);
                    b.network = false;
                    b.network_disturbed = Some(tl.elapsed());
                    tl.print("network", Kind::Heal, "network back to normal");
                });
            }
            Fault::RegistryWipe => {
                if b.registry_down {
                    continue;
                }
                // kill first: madsim's restart alone keeps the node's
                // sockets bound.
                handle.kill(cluster.agent);
                if let Some(kv) = &cluster.kv {
                    kv.wipe();
                }
                handle.restart(cluster.agent);
                b.registry_back = Some(now);
                tl.print(
                    "registry",
                    Kind::Fault,
                    format_args!("#{n} restarted: every registration wiped"),
                );
            }
            Fault::RegistryOutage => {
                if b.registry_down {
                    continue;
                }
                let d = strike.span(1_000, 8_000, left);
                handle.kill(cluster.agent);
                b.registry_down = true;
                tl.print("registry", Kind::Fault, format_args!("#{n} down for {d:?}"));
                let (tl, broken, agent) = (tl.clone(), broken.clone(), cluster.agent);
                // The Consul agent model keeps nothing; JetStream keeps
                // the bucket on disk across a restart.
                let back = if cluster.kv.is_some() {
                    "back, with its data"
                } else {
                    "back, empty"
                };
                rt::spawn(async move {
                    rt::sleep(d).await;
                    Handle::current().restart(agent);
                    let mut b = lock(&broken);
                    b.registry_down = false;
                    b.registry_back = Some(tl.elapsed());
                    tl.print("registry", Kind::Heal, back);
                });
            }
            Fault::DiskFull | Fault::DiskFailing | Fault::DiskSlow => {
                if with_disk.is_empty() {
                    continue;
                }
                let victim = nodes[with_disk[strike.a % with_disk.len()]];
                if !b.disks.insert(victim) {
                    continue;
                }
                let kind = match strike.fault {
                    Fault::DiskFull => 0,
                    Fault::DiskFailing => 1,
                    _ => 2,
                };
                let fault = disk_faults::fault(kind, strike.level);
                let d = strike.span(1_000, 8_000, left);
                disk_faults::strike(victim, fault);
                b.disturbed.push((victim, now));
                tl.print(
                    &lane_of(victim),
                    Kind::Fault,
                    format_args!("#{n} disk {fault:?} for {d:?}"),
                );
                let (tl, broken, lane) = (tl.clone(), broken.clone(), lane_of(victim));
                rt::spawn(async move {
                    rt::sleep(d).await;
                    disk_faults::heal(victim);
                    let mut b = lock(&broken);
                    b.disks.remove(&victim);
                    b.disturbed.push((victim, tl.elapsed()));
                    tl.print(&lane, Kind::Heal, "disk healed");
                });
            }
            Fault::DatabaseOutage | Fault::ObjectStoreOutage => {
                let (node, lane) = if strike.fault == Fault::DatabaseOutage {
                    (cluster.db, "database")
                } else {
                    (cluster.objects, "objects")
                };
                let Some(node) = node else { continue };
                if !b.stores_down.insert(lane) {
                    continue;
                }
                let d = strike.span(500, 8_000, left);
                // A crash loses what was in progress (open transactions,
                // their row locks with them; multipart uploads); a cut
                // leaves the transactions to idle out.
                let crash = strike.lossy;
                if crash {
                    handle.kill(node);
                } else {
                    net.clog_node(node);
                }
                tl.print(
                    lane,
                    Kind::Fault,
                    format_args!(
                        "#{n} {} for {d:?}",
                        if crash { "crash" } else { "partitioned" }
                    ),
                );
                let (tl, broken) = (tl.clone(), broken.clone());
                rt::spawn(async move {
                    rt::sleep(d).await;
                    if crash {
                        Handle::current().restart(node);
                    } else {
                        NetSim::current().unclog_node(node);
                    }
                    lock(&broken).stores_down.remove(lane);
                    tl.print(lane, Kind::Heal, "back");
                });
            }
            Fault::BrokerOutage => {
                if b.broker_down {
                    continue;
                }
                let d = strike.span(1_000, 8_000, left);
                handle.kill(cluster.broker);
                // In production the bus and the job queue are one NATS
                // server: its JetStream goes down with it (and comes back
                // with its data, as file storage does).
                if let Some(jobs) = cluster.jobs {
                    handle.kill(jobs);
                }
                b.broker_down = true;
                let also = if cluster.jobs.is_some() {
                    ", and the jobs' JetStream with it"
                } else {
                    ""
                };
                tl.print(
                    "broker",
                    Kind::Fault,
                    format_args!("#{n} down for {d:?}{also}"),
                );
                let (tl, broken, node, jobs) =
                    (tl.clone(), broken.clone(), cluster.broker, cluster.jobs);
                rt::spawn(async move {
                    rt::sleep(d).await;
                    Handle::current().restart(node);
                    if let Some(jobs) = jobs {
                        Handle::current().restart(jobs);
                    }
                    lock(&broken).broker_down = false;
                    tl.print("broker", Kind::Heal, "back");
                });
            }
        }
    }
}

/// Cuts the worker `victim` (on its timeline lane) from the jobs' NATS
/// node `jobs`, both ways, for `d`, as fault number `n`.
fn cut_from_jobs(
    (victim, lane): (NodeId, String),
    jobs: NodeId,
    d: Duration,
    n: u32,
    (tl, broken): (&Timeline, &Shared),
    now: Duration,
    b: &mut Broken,
) {
    let net = NetSim::current();
    net.clog_link(victim, jobs);
    net.clog_link(jobs, victim);
    b.disturbed.push((victim, now));
    tl.print(
        &lane,
        Kind::Fault,
        format_args!("#{n} cut from the jobs' NATS node for {d:?}"),
    );
    let (tl, broken) = (tl.clone(), broken.clone());
    rt::spawn(async move {
        rt::sleep(d).await;
        let net = NetSim::current();
        net.unclog_link(victim, jobs);
        net.unclog_link(jobs, victim);
        let mut b = lock(&broken);
        b.cut.remove(&victim);
        b.disturbed.push((victim, tl.elapsed()));
        tl.print(&lane, Kind::Heal, "cut from the jobs' node healed");
    });
}

/// Whether every fault has healed.
pub fn all_healed(broken: &Shared) -> bool {
    let b = lock(broken);
    b.down.is_empty()
        && b.cut.is_empty()
        && b.clogged.is_empty()
        && !b.network
        && !b.registry_down
        && !b.broker_down
        && b.stores_down.is_empty()
        && b.disks.is_empty()
}
