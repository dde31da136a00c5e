//! The client pool under faults: three cache instances on three nodes; one
//! crashes. Its breaker trips, traffic moves to the healthy instances, the
//! registry drops it after its TTL, and when it is back the pool uses it
//! again. Breaker invariants are asserted on every transition as it happens.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::client::balanced::TransitionHook;
use streamgate::client::{ClientPool, PoolConfig};
use streamgate::proto::CacheSetRequest;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::registry::Registry;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::resilience::breaker::{BreakerConfig, Transition};
use streamgate::rt;
use streamgate::services::ServiceKind;

use crate::trace::{announce, note};

fn cache_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 2, 10 + i))
}

/// Checks the breaker invariants on each transition of each instance.
#[derive(Default)]
pub(crate) struct BreakerChecker {
    streak: HashMap<String, Option<Duration>>,
    probing: HashMap<String, u32>,
    trips: u32,
    pub(crate) closes: u32,
}

/// A client pool whose breaker transitions are printed on the timeline and
/// checked against the breaker invariants as they happen.
pub(crate) fn checked_pool(
    registry: Arc<MemoryRegistry>,
    breaker: BreakerConfig,
    start: std::time::Instant,
) -> (ClientPool, Arc<Mutex<BreakerChecker>>) {
    let checker = Arc::new(Mutex::new(BreakerChecker::default()));
    let c = checker.clone();
    let hook: TransitionHook = Arc::new(move |id: &str, t| {
        note(start, format_args!("breaker {id}: {t:?}"));
        c.lock().expect("checker").observe(id, t, breaker.min_calls);
    });
    let cfg = PoolConfig {
        breaker,
        on_transition: Some(hook),
        ..crate::common::pool("client")
    };
    (ClientPool::new(registry, cfg), checker)
}

impl BreakerChecker {
    pub(crate) fn observe(&mut self, id: &str, t: Transition, min_calls: u32) {
        match t {
            Transition::Tripped {
                window_calls,
                interval,
            } => {
                assert!(
                    window_calls >= min_calls,
                    "{id}: tripped with {window_calls} < {min_calls} calls"
                );
                self.streak.insert(id.to_owned(), Some(interval));
                self.probing.insert(id.to_owned(), 0);
                self.trips += 1;
            }
            Transition::Reopened { interval } => {
                let prev = self
                    .streak
                    .get(id)
                    .copied()
                    .flatten()
                    .expect("reopen follows a trip");
                assert!(
                    interval >= prev,
                    "{id}: open interval shrank {prev:?} -> {interval:?}"
                );
                self.streak.insert(id.to_owned(), Some(interval));
                self.probing.insert(id.to_owned(), 0);
            }
            Transition::Probing => {
                let n = self.probing.entry(id.to_owned()).or_default();
                *n += 1;
                assert_eq!(
                    *n, 1,
                    "{id}: open to half-open more than once in one open period"
                );
            }
            Transition::Closed => {
                self.streak.insert(id.to_owned(), None);
                self.closes += 1;
            }
        }
    }
}

#[madsim::test]
async fn traffic_moves_off_a_crashed_instance_and_back() {
    let _progress = announce("traffic_moves_off_a_crashed_instance_and_back");
    let handle = Handle::current();
    // The registry is shared in memory here; the simulated registry node
    // replaces it in the registry scenarios.
    let registry = Arc::new(MemoryRegistry::new());
    let ips: Vec<_> = (0..3u8).map(cache_ip).collect();
    let nodes = crate::common::cache_nodes(&registry, &ips, Duration::from_secs(1));
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 2, 2].into())
        .build();
    let victim = nodes[0];
    let victim_addr = SocketAddr::new(cache_ip(0), ServiceKind::Cache.default_port());

    client
        .spawn(async move {
            let start = rt::now();
            let breaker = BreakerConfig::new(3, Duration::from_secs(1));
            let (pool, checker) = checked_pool(registry.clone(), breaker, start);
            rt::sleep(Duration::from_millis(200)).await;
            let mut cache = CacheServiceClient::new(pool.channel("cache").await.expect("channel"));
            assert_eq!(pool.endpoints("cache").len(), 3);

            let mut call = {
                let mut n = 0u32;
                move || {
                    n += 1;
                    let mut req = tonic::Request::new(CacheSetRequest {
                        key: format!("k{n}"),
                        value: vec![1],
                        ttl_ms: 0,
                    });
                    req.set_timeout(Duration::from_millis(300));
                    req
                }
            };
            for _ in 0..30 {
                cache.set(call()).await.expect("healthy cluster");
            }
            Handle::current().kill(victim);
            note(start, "killed cache-0");
            let (mut ok, mut failed) = (0, 0);
            for _ in 0..60 {
                match cache.set(call()).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                rt::sleep(Duration::from_millis(20)).await;
            }
            note(
                start,
                format_args!("during the crash: {ok} ok, {failed} failed"),
            );
            assert!(
                failed <= 10,
                "the breaker (or the registry) took the crashed instance out: {failed} failures"
            );
            assert!(
                checker.lock().expect("checker").trips >= 1 || pool.endpoints("cache").len() == 2
            );

            // The TTL expires: the registry drops it, and so does the pool.
            rt::sleep(Duration::from_secs(3)).await;
            let held: Vec<_> = pool.endpoints("cache").iter().map(|e| e.addr).collect();
            assert!(
                !held.contains(&victim_addr),
                "the pool dropped the crashed instance: {held:?}"
            );
            assert!(registry.discover("cache").await.expect("discover").len() == 2);

            Handle::current().restart(victim);
            let restarted = rt::now();
            while pool.endpoints("cache").len() < 3 {
                assert!(
                    rt::now() - restarted < Duration::from_secs(5),
                    "back in the pool within 5 s"
                );
                rt::sleep(Duration::from_millis(50)).await;
            }
            note(
                start,
                format_args!("cache-0 back in the pool after {:?}", rt::now() - restarted),
            );
            for _ in 0..30 {
                cache.set(call()).await.expect("healed cluster");
            }
            let used: u32 = pool
                .endpoints("cache")
                .iter()
                .filter(|e| e.addr == victim_addr)
                .count() as u32;
            assert_eq!(used, 1);
        })
        .await
        .expect("scenario");
}
