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
use rand::Rng as _;
use rand::seq::SliceRandom as _;
use streamgate::kernel::ServiceKind;
use streamgate::rt;

use super::cluster::Cluster;
use super::timeline::{Kind, Timeline};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A service node crashes and restarts later (its data dir survives).
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
}

const ALL: [Fault; 8] = [
    Fault::Crash,
    Fault::Partition,
    Fault::Clog,
    Fault::Loss,
    Fault::Latency,
    Fault::RegistryWipe,
    Fault::RegistryOutage,
    Fault::BrokerOutage,
];

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
    /// buggify points forced on now and then (short timeouts, dropped
    /// acks, duplicated events).
    pub buggify: bool,
}

impl Plan {
    /// Draws a plan from the run's seed: each fault kind on with
    /// probability 1/2.
    pub fn draw() -> Self {
        let mut rng = rt::rng();
        let faults = ALL.into_iter().filter(|_| rng.gen_bool(0.5)).collect();
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
        }
    }

    /// One line saying what is on.
    pub fn describe(&self) -> String {
        format!(
            "swarm: faults {:?} every ~{:?}; transcodes {:?}, {:.0} % fail; buggify {}",
            self.faults,
            self.gap,
            self.transcode_time,
            self.transcode_failure_rate * 100.0,
            if self.buggify { "on" } else { "off" }
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

/// Strikes faults of `plan` until `until` (simulated time since the start
/// of the timeline); every fault heals by then.
pub async fn inject(cluster: Cluster, plan: Plan, tl: Timeline, broken: Shared, until: Duration) {
    if plan.faults.is_empty() {
        return;
    }
    let handle = Handle::current();
    let net = NetSim::current();
    let mut default_net = None;
    net.update_config(|c| default_net = Some(c.clone()));
    let default_net = default_net.expect("config read");
    let nodes: Vec<NodeId> = cluster.members.iter().map(|m| m.id).collect();
    let lane_of = |id: NodeId| {
        cluster
            .members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| format!("{id}"), |m| m.name.clone())
    };
    loop {
        let gap = plan.gap.mul_f64(rt::rng().gen_range(0.2..1.8));
        rt::sleep(gap).await;
        let now = tl.elapsed();
        if now >= until {
            return;
        }
        let left = until - now;
        let span = |lo: u64, hi: u64| Duration::from_millis(rt::rng().gen_range(lo..hi)).min(left);
        let fault = *plan.faults.choose(&mut rt::rng()).expect("some fault");
        let mut b = lock(&broken);
        b.count += 1;
        match fault {
            Fault::Crash => {
                let up: Vec<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|n| !b.down.contains(n))
                    .collect();
                let Some(&victim) = up.choose(&mut rt::rng()) else {
                    continue;
                };
                let d = span(500, 8_000);
                handle.kill(victim);
                b.down.insert(victim);
                b.disturbed.push((victim, now));
                tl.print(
                    &lane_of(victim),
                    Kind::Fault,
                    format_args!("crash for {d:?}"),
                );
                let (tl, broken, lane) = (tl.clone(), broken.clone(), lane_of(victim));
                rt::spawn(async move {
                    rt::sleep(d).await;
                    Handle::current().restart(victim);
                    let mut b = lock(&broken);
                    b.down.remove(&victim);
                    b.disturbed.push((victim, tl.elapsed()));
                    tl.print(&lane, Kind::Heal, "restarted");
                });
            }
            Fault::Partition => {
                let Some(&victim) = nodes.choose(&mut rt::rng()) else {
                    continue;
                };
                if !b.cut.insert(victim) {
                    continue;
                }
                let d = span(1_000, 8_000);
                net.clog_node(victim);
                b.disturbed.push((victim, now));
                tl.print(
                    &lane_of(victim),
                    Kind::Fault,
                    format_args!("partitioned for {d:?}"),
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
                let pair: Vec<NodeId> = if rt::rng().gen_bool(0.5) {
                    let gateways: Vec<NodeId> = cluster
                        .members
                        .iter()
                        .filter(|m| m.kind == ServiceKind::ApiGateway)
                        .map(|m| m.id)
                        .collect();
                    let others: Vec<NodeId> = cluster
                        .members
                        .iter()
                        .filter(|m| m.kind != ServiceKind::ApiGateway)
                        .map(|m| m.id)
                        .collect();
                    vec![
                        *gateways.choose(&mut rt::rng()).expect("a gateway"),
                        *others.choose(&mut rt::rng()).expect("a service"),
                    ]
                } else {
                    nodes.choose_multiple(&mut rt::rng(), 2).copied().collect()
                };
                let (from, to) = (pair[0], pair[1]);
                if !b.clogged.insert((from, to)) {
                    continue;
                }
                let d = span(2_000, 12_000);
                net.clog_link(from, to);
                b.disturbed.push((from, now));
                b.disturbed.push((to, now));
                tl.print(
                    &lane_of(from),
                    Kind::Fault,
                    format_args!("link to {} clogged for {d:?}", lane_of(to)),
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
                let d = span(1_000, 6_000);
                if fault == Fault::Loss {
                    let rate = rt::rng().gen_range(0.01..0.1);
                    net.update_config(|c| c.packet_loss_rate = rate);
                    tl.print(
                        "network",
                        Kind::Fault,
                        format_args!("{:.0} % packet loss for {d:?}", rate * 100.0),
                    );
                } else {
                    let ms = rt::rng().gen_range(50..500);
                    net.update_config(|c| {
                        c.send_latency = Duration::from_millis(ms / 2)..Duration::from_millis(ms);
                    });
                    tl.print(
                        "network",
                        Kind::Fault,
                        format_args!("latency up to {ms} ms for {d:?}"),
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
                handle.restart(cluster.agent);
                b.registry_back = Some(now);
                tl.print(
                    "registry",
                    Kind::Fault,
                    "restarted: every registration wiped",
                );
            }
            Fault::RegistryOutage => {
                if b.registry_down {
                    continue;
                }
                let d = span(1_000, 8_000);
                handle.kill(cluster.agent);
                b.registry_down = true;
                tl.print("registry", Kind::Fault, format_args!("down for {d:?}"));
                let (tl, broken, agent) = (tl.clone(), broken.clone(), cluster.agent);
                rt::spawn(async move {
                    rt::sleep(d).await;
                    Handle::current().restart(agent);
                    let mut b = lock(&broken);
                    b.registry_down = false;
                    b.registry_back = Some(tl.elapsed());
                    tl.print("registry", Kind::Heal, "back, empty");
                });
            }
            Fault::BrokerOutage => {
                if b.broker_down {
                    continue;
                }
                let d = span(1_000, 8_000);
                handle.kill(cluster.broker);
                b.broker_down = true;
                tl.print("broker", Kind::Fault, format_args!("down for {d:?}"));
                let (tl, broken, node) = (tl.clone(), broken.clone(), cluster.broker);
                rt::spawn(async move {
                    rt::sleep(d).await;
                    Handle::current().restart(node);
                    lock(&broken).broker_down = false;
                    tl.print("broker", Kind::Heal, "back");
                });
            }
        }
    }
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
}
