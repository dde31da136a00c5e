//! The yardstick for the swarm's speed: a 10-node toy exchanging about
//! 110 k messages over 60 simulated seconds (the issue quotes ~480 seeds
//! per minute per core for it). Ignored in the test run; `ci/sim-bench`
//! times it against the swarm, one seed per process, on one core.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use madsim::net::Endpoint;
use madsim::runtime::Handle;
use rand::Rng as _;
use streamgate::rt;

const NODES: u8 = 10;
const RUN: Duration = Duration::from_secs(60);
/// Each node sends one message this often (plus the send itself, about
/// 1 ms): about 110 k messages in all.
const EVERY: Duration = Duration::from_micros(4_450);

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 20, 10 + i))
}

#[madsim::test]
#[ignore = "a benchmark: ci/sim-bench runs it"]
async fn toy() {
    let handle = Handle::current();
    let received = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for i in 0..NODES {
        let node = handle
            .create_node()
            .name(format!("toy-{i}"))
            .ip(ip(i))
            .build();
        let received = received.clone();
        senders.push(node.spawn(async move {
            let ep = Arc::new(Endpoint::bind((ip(i), 7000)).await.expect("bind"));
            let rx = ep.clone();
            rt::spawn(async move {
                let mut buf = [0u8; 64];
                while rx.recv_from(1, &mut buf).await.is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
            let start = rt::now();
            let mut sent = 0u64;
            while rt::now() - start < RUN {
                let peer = rt::rng().gen_range(0..NODES);
                let dst = SocketAddr::new(ip(peer), 7000);
                let _ = ep.send_to(dst, 1, &sent.to_le_bytes()).await;
                sent += 1;
                rt::sleep(EVERY).await;
            }
            sent
        }));
    }
    let mut sent = 0;
    for s in senders {
        sent += s.await.expect("sender");
    }
    rt::sleep(Duration::from_millis(100)).await;
    println!(
        "toy: {sent} messages sent, {} received in {RUN:?}",
        received.load(Ordering::Relaxed)
    );
    assert!(sent > 100_000, "{sent}");
}
