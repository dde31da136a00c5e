//! The simulated registry node: a modelled Consul agent on its own node,
//! reached over madsim's network by every service's `ConsulRegistry`. Its
//! TTL checks are fed by heartbeats over the network; a restart wipes its
//! data. Checked: every live service is discoverable again within a bound
//! after the wipe, a crashed service leaves the healthy set within its check
//! interval + timeout, and watches recover without spinning.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Handle;
use rand::Rng as _;
use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{HEARTBEAT_INTERVAL, Kernel, Plugin, Seams};
use streamgate::registry::Registry;
use streamgate::registry::consul::{ConsulConfig, ConsulRegistry, SimTransport};
use streamgate::registry::watcher::{WatchPolicy, Watcher};
use streamgate::rt;
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};
use streamgate_testkit::consul_agent::{AgentConfig, ConsulAgent};

use crate::trace::{announce, note};

pub const AGENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)), 8500);
/// TTL heartbeat interval of the services here; they turn critical after
/// interval + timeout (= 2 x interval) without one.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Bound for a live service to be discoverable again after the registry
/// lost its data: the next heartbeat (HEARTBEAT_INTERVAL) gets NotFound and
/// re-registers at once; 1 s of slack covers request latencies and a
/// heartbeat that failed while the agent was still down.
const REDISCOVERY_BOUND: Duration = Duration::from_secs(3);
/// Slack over interval + timeout for a crashed service to leave the set
/// (polling granularity and network latency).
const CRASH_SLACK: Duration = Duration::from_millis(200);

fn service_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 3, 10 + i))
}

/// A registry client of the simulated agent.
pub fn consul() -> Arc<dyn Registry> {
    let config = ConsulConfig {
        address: format!("http://{AGENT}"),
        ..ConsulConfig::default()
    };
    Arc::new(ConsulRegistry::new(&config, SimTransport).expect("valid address"))
}

/// Runs the agent on this node until it is killed; a restart starts empty.
pub async fn serve_agent() {
    let agent = ConsulAgent::new(AgentConfig {
        reap_interval: Duration::from_secs(1),
        ..AgentConfig::default()
    });
    crate::common::serve_http(AGENT, agent.router(), "the Consul agent model").await;
}

async fn healthy(registry: &dyn Registry) -> usize {
    registry.discover("cache").await.map_or(0, |set| set.len())
}

#[madsim::test]
async fn services_survive_a_registry_wipe_and_crashes_leave_the_healthy_set() {
    let _progress = announce("services_survive_a_registry_wipe_and_crashes_leave_the_healthy_set");
    let handle = Handle::current();
    let agent = handle
        .create_node()
        .name("consul")
        .ip(AGENT.ip())
        .init(serve_agent)
        .build();
    let mut services = Vec::new();
    for i in 0..3u8 {
        let node = handle
            .create_node()
            .name(format!("cache-{i}"))
            .ip(service_ip(i))
            .init(move || async move {
                rt::sleep(Duration::from_millis(100)).await;
                let common = Common {
                    check_interval: CHECK_INTERVAL,
                    ..Common::new(ServiceKind::Cache, service_ip(i))
                };
                let config = ServiceConfig::new(ServiceKind::Cache);
                let plugins: Vec<Box<dyn Plugin>> =
                    vec![Box::new(ServicePlugin::new(common, config))];
                let _kernel = Kernel::start_with(
                    Seams::new(Arc::new(MemoryBus::new()), consul()),
                    crate::common::pool("cache"),
                    plugins,
                )
                .await
                .expect("kernel starts");
                std::future::pending::<()>().await;
            })
            .build();
        services.push(node.id());
    }
    let observer = handle
        .create_node()
        .name("observer")
        .ip([10, 0, 3, 2].into())
        .build();
    let agent_id = agent.id();
    observer
        .spawn(async move {
            let start = rt::now();
            let registry = consul();
            let policy = WatchPolicy {
                wait: Duration::from_secs(5),
                ..WatchPolicy::default()
            };
            let watcher = Watcher::spawn(registry.clone(), "cache", policy);
            let mut watched = watcher.instances();

            let deadline = rt::now() + Duration::from_secs(3);
            while healthy(&*registry).await < 3 {
                assert!(rt::now() < deadline, "all three registered within 3 s");
                rt::sleep(Duration::from_millis(50)).await;
            }
            note(start, "3 instances passing");

            // Registry outage of a random length, then it comes back empty.
            let outage = Duration::from_millis(rt::rng().gen_range(100..3_000));
            Handle::current().kill(agent_id);
            note(start, format_args!("registry killed for {outage:?}"));
            rt::sleep(outage).await;
            Handle::current().restart(agent_id);
            let back = rt::now();
            loop {
                let n = healthy(&*registry).await;
                if n == 3 {
                    break;
                }
                assert!(
                    rt::now() - back <= REDISCOVERY_BOUND,
                    "only {n} of 3 rediscoverable {REDISCOVERY_BOUND:?} after the wipe"
                );
                rt::sleep(Duration::from_millis(50)).await;
            }
            note(
                start,
                format_args!(
                    "all 3 discoverable {:?} after the wiped registry restarted",
                    rt::now() - back
                ),
            );
            rt::timeout(
                Duration::from_secs(10),
                watched.wait_for(|set| set.len() == 3),
            )
            .await
            .expect("the watch recovered after the outage")
            .expect("watcher alive");

            // Crash one service (seed-chosen): it must leave the healthy set
            // within interval + timeout of its last heartbeat.
            let victim = rt::rng().gen_range(0..services.len());
            Handle::current().kill(services[victim]);
            let crashed = rt::now();
            let bound = 2 * CHECK_INTERVAL + CRASH_SLACK;
            while healthy(&*registry).await != 2 {
                assert!(
                    rt::now() - crashed <= bound,
                    "cache-{victim} still passing {bound:?} after its crash"
                );
                rt::sleep(Duration::from_millis(20)).await;
            }
            note(
                start,
                format_args!(
                    "cache-{victim} left the healthy set {:?} after crashing",
                    rt::now() - crashed
                ),
            );
            assert!(
                HEARTBEAT_INTERVAL <= CHECK_INTERVAL,
                "heartbeats come at least once per check interval"
            );
        })
        .await
        .expect("scenario");
}

#[madsim::test]
async fn simulated_registry_meets_the_contract() {
    let _progress = announce("simulated_registry_meets_the_contract");
    let handle = Handle::current();
    handle
        .create_node()
        .name("consul")
        .ip(AGENT.ip())
        .init(serve_agent)
        .build();
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 3, 3].into())
        .build();
    client
        .spawn(async {
            rt::sleep(Duration::from_millis(50)).await;
            let opts = streamgate_testkit::registry_contract::Options {
                ttl_interval: Duration::from_secs(1),
                expiry_slack: Duration::from_millis(500),
                set_status: Some(streamgate_testkit::consul_agent::set_status_over_http(
                    format!("http://{AGENT}"),
                    None,
                    Arc::new(SimTransport),
                )),
            };
            streamgate_testkit::registry_contract::run_all(consul(), opts).await;
        })
        .await
        .expect("contract");
}
