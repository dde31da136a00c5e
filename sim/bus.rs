//! The event bus contract against the simulated broker node, and the
//! broker's disconnect behaviour: publishes fail while it is down,
//! subscribers reconnect by themselves when it is back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use streamgate::bus::{BusError, Event, EventBus, EventType, handler};
use streamgate::rt;
use streamgate_testkit::bus_contract;

use crate::broker::{SimBus, broker_node};
use crate::trace::{announce, note};

const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 4222);

#[madsim::test]
async fn sim_bus_meets_the_contract() {
    let _progress = announce("sim_bus_meets_the_contract");
    let handle = Handle::current();
    broker_node(BROKER);
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 1, 2].into())
        .build();
    client
        .spawn(async {
            rt::sleep(Duration::from_millis(50)).await;
            bus_contract::run_all(Arc::new(SimBus::new(BROKER))).await;
        })
        .await
        .expect("contract");
}

#[madsim::test]
async fn subscribers_reconnect_after_a_broker_restart() {
    let _progress = announce("subscribers_reconnect_after_a_broker_restart");
    let handle = Handle::current();
    let broker_id = broker_node(BROKER);
    let client = handle
        .create_node()
        .name("client")
        .ip([10, 0, 1, 2].into())
        .build();
    client
        .spawn(async move {
            let start = rt::now();
            rt::sleep(Duration::from_millis(50)).await;
            let bus = SimBus::new(BROKER);
            let seen: Arc<Mutex<Vec<String>>> = Arc::default();
            let record = seen.clone();
            let _sub = bus
                .subscribe(
                    EventType::FileUploaded.subject(),
                    None,
                    handler(move |e: Event| {
                        let record = record.clone();
                        async move {
                            record.lock().expect("seen").push(e.data["n"].to_string());
                            Ok(())
                        }
                    }),
                )
                .await
                .expect("subscribe");
            let event = |n: u32| {
                Event::new(
                    EventType::FileUploaded,
                    "sim",
                    serde_json::json!({ "n": n }),
                )
            };
            let delivered = |n: u32| seen.lock().expect("seen").contains(&n.to_string());

            bus.publish(&event(1)).await.expect("publish while up");
            rt::sleep(Duration::from_millis(100)).await;
            assert!(delivered(1), "delivered while up");

            Handle::current().kill(broker_id);
            let err = bus
                .publish(&event(2))
                .await
                .expect_err("publish while down");
            note(
                start,
                format_args!("publish while the broker is down: {err}"),
            );
            assert!(matches!(err, BusError::Unavailable(_)), "{err}");

            Handle::current().restart(broker_id);
            // Probe until the subscriber is back; bounded by its reconnect backoff.
            let restarted = rt::now();
            let mut n = 100;
            loop {
                n += 1;
                if bus.publish(&event(n)).await.is_ok() {
                    rt::sleep(Duration::from_millis(50)).await;
                    if delivered(n) {
                        break;
                    }
                }
                assert!(
                    rt::now() - restarted < Duration::from_secs(5),
                    "subscriber back within 5 s"
                );
                rt::sleep(Duration::from_millis(50)).await;
            }
            note(
                start,
                format_args!(
                    "subscriber back {:?} after the restart",
                    rt::now() - restarted
                ),
            );
            assert!(bus.reconnects.load(std::sync::atomic::Ordering::Relaxed) >= 1);
            assert!(
                !delivered(2),
                "at most once: nothing published during the outage arrives"
            );
        })
        .await
        .expect("scenario");
}
