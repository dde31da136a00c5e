//! Overload safety: a hung instance (its node paused) trips its breaker and
//! traffic moves on; during a full outage of the service, retries stay within
//! the retry budget (no storm); after recovery the calls succeed again.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::client::ClientPool;
use streamgate::middleware::retry::{Retrier, stamp};
use streamgate::proto::CacheSetRequest;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::resilience::breaker::BreakerConfig;
use streamgate::resilience::budget::BudgetConfig;
use streamgate::resilience::retry::RetryPolicy;
use streamgate::rt;

use crate::retry_check::RetryChecker;
use crate::trace::{announce, note};

fn cache_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 4, 10 + i))
}

#[madsim::test]
async fn hung_instance_trips_and_full_outage_stays_within_the_retry_budget() {
    let _progress = announce("hung_instance_trips_and_full_outage_stays_within_the_retry_budget");
    let handle = Handle::current();
    let registry = Arc::new(MemoryRegistry::new());
    // Long TTL: the registry keeps listing them, so only the breakers and
    // the budget protect the callers here.
    let ips: Vec<_> = (0..2u8).map(cache_ip).collect();
    let nodes = crate::common::cache_nodes(&registry, &ips, Duration::from_secs(60));
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 4, 2].into())
        .build();
    client
        .spawn(async move {
            let start = rt::now();
            let cfg = streamgate::client::PoolConfig {
                breaker: BreakerConfig::new(3, Duration::from_secs(2)),
                ..crate::common::pool("client")
            };
            let pool = ClientPool::new(registry, cfg);
            rt::sleep(Duration::from_millis(200)).await;
            let cache = CacheServiceClient::new(pool.channel("cache").await.expect("channel"));
            let budget = BudgetConfig {
                ttl: Duration::from_secs(10),
                min_per_sec: 1,
                ratio: 0.2,
            };
            let policy = RetryPolicy {
                max_attempts: 4,
                ..RetryPolicy::default()
            };
            let (checker, hook) = RetryChecker::hook(policy.clone());
            let retrier = Retrier::new(policy.clone(), budget).with_hook(hook.clone());
            let attempts = Arc::new(AtomicU64::new(0));
            let call = |retrier: &Retrier, n: u32| {
                let (cache, retrier, attempts) = (cache.clone(), retrier.clone(), attempts.clone());
                async move {
                    retrier
                        .call(true, move |previous| {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            let mut req = tonic::Request::new(CacheSetRequest {
                                key: format!("k{n}"),
                                value: vec![1],
                                ttl_ms: 0,
                            });
                            req.set_timeout(Duration::from_millis(200));
                            stamp(&mut req, previous);
                            let mut cache = cache.clone();
                            async move { cache.set(req).await.map(drop) }
                        })
                        .await
                }
            };

            // A hung instance: calls to it time out until its breaker opens.
            Handle::current().pause(nodes[0]);
            note(start, "cache-0 hung");
            // Warm-up: calls that hit it time out (and are retried) until its breaker opens.
            for n in 0..20 {
                let _ = call(&retrier, n).await;
            }
            let hung = pool
                .endpoints("cache")
                .into_iter()
                .find(|e| e.addr.ip() == cache_ip(0))
                .expect("listed");
            note(
                start,
                format_args!("after 20 calls: cache-0 breaker {:?}", hung.breaker_state()),
            );
            assert!(
                matches!(
                    hung.breaker_state(),
                    streamgate::resilience::breaker::State::Open { .. }
                ),
                "the hung instance's breaker is open"
            );
            let mut failed = 0;
            for n in 20..60 {
                if call(&retrier, n).await.is_err() {
                    failed += 1;
                }
            }
            note(
                start,
                format_args!("with cache-0 hung and its breaker open: {failed} of 40 failed"),
            );
            assert!(
                failed <= 1,
                "traffic moved to the healthy instance: {failed} of 40 failed"
            );

            // Full outage: every instance down. Attempts stay within the budget.
            Handle::current().kill(nodes[1]);
            Handle::current().resume(nodes[0]);
            Handle::current().kill(nodes[0]);
            attempts.store(0, Ordering::Relaxed);
            // A fresh retrier, so the budget counts only this phase's calls.
            let retrier = Retrier::new(policy.clone(), budget).with_hook(hook.clone());
            let outage = rt::now();
            let requests = 200u64;
            for n in 0..requests {
                assert!(
                    call(&retrier, 1000 + n as u32).await.is_err(),
                    "nothing answers during the outage"
                );
            }
            let made = attempts.load(Ordering::Relaxed);
            let windows =
                ((rt::now() - outage).as_secs_f64() / budget.ttl.as_secs_f64()).ceil() + 1.0;
            let bound = (1.0 + budget.ratio) * requests as f64
                + f64::from(budget.min_per_sec) * budget.ttl.as_secs_f64() * windows;
            note(
                start,
                format_args!("full outage: {made} attempts for {requests} calls (bound {bound})"),
            );
            assert!(
                made as f64 <= bound,
                "retry storm: {made} attempts > {bound}"
            );

            // Recovery: both back; calls succeed once the breakers let probes through.
            Handle::current().restart(nodes[0]);
            Handle::current().restart(nodes[1]);
            let back = rt::now();
            let mut n = 5000;
            loop {
                n += 1;
                if call(&retrier, n).await.is_ok() {
                    break;
                }
                assert!(
                    rt::now() - back < Duration::from_secs(30),
                    "calls succeed again within 30 s of recovery"
                );
                rt::sleep(Duration::from_millis(100)).await;
            }
            note(
                start,
                format_args!("calls succeed {:?} after recovery", rt::now() - back),
            );
            let checked = checker.lock().expect("checker");
            note(
                start,
                format_args!(
                    "retry checker: {} decisions, {} retries, all within the invariants",
                    checked.decisions, checked.retries
                ),
            );
            assert!(checked.retries > 0, "the scenario exercised retries");
        })
        .await
        .expect("scenario");
}
