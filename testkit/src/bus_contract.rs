//! The event bus contract: what every [`EventBus`] backend must do.
//!
//! Each run tags its events with a unique `source`, and handlers ignore
//! other sources, so runs against a shared server do not see each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamgate::bus::{BusError, Event, EventBus, EventType, handler};
use streamgate::rt;

/// How long a delivery may take before the contract calls it lost.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

type Seen = Arc<Mutex<Vec<Event>>>;

/// A handler that records events from `source` only.
fn recorder(source: String, seen: Seen) -> streamgate::bus::Handler {
    handler(move |event: Event| {
        let (source, seen) = (source.clone(), seen.clone());
        async move {
            if event.source == source {
                seen.lock().expect("seen").push(event);
            }
            Ok(())
        }
    })
}

/// Waits until `seen` holds `n` events (or fails after [`DELIVERY_TIMEOUT`]),
/// then a little longer to catch duplicates.
async fn await_count(seen: &Seen, n: usize, what: &str) -> Vec<Event> {
    let started = rt::now();
    while seen.lock().expect("seen").len() < n {
        assert!(
            rt::now() - started < DELIVERY_TIMEOUT,
            "{what}: {n} events not delivered in time"
        );
        rt::sleep(Duration::from_millis(10)).await;
    }
    rt::sleep(Duration::from_millis(200)).await;
    seen.lock().expect("seen").clone()
}

fn source() -> String {
    format!("contract-{:08x}", rt::random_u64() as u32)
}

/// Runs every rule; `bus` is closed at the end.
pub async fn run_all(bus: Arc<dyn EventBus>) {
    delivers_intact_to_every_subscriber(&*bus).await;
    queue_group_shares_the_work(&*bus).await;
    handler_failures_do_not_end_the_subscription(&*bus).await;
    unsubscribe_stops_delivery(&*bus).await;
    refuses_invalid_names(&*bus).await;
    closed_bus_refuses_publish(&*bus).await;
}

/// Every plain subscriber gets every event, with every field intact.
pub async fn delivers_intact_to_every_subscriber(bus: &dyn EventBus) {
    let src = source();
    let (one, two): (Seen, Seen) = Default::default();
    let subject = EventType::FileUploaded.subject();
    let _s1 = bus
        .subscribe(subject, None, recorder(src.clone(), one.clone()))
        .await
        .expect("subscribe 1");
    let _s2 = bus
        .subscribe(subject, None, recorder(src.clone(), two.clone()))
        .await
        .expect("subscribe 2");
    rt::sleep(Duration::from_millis(100)).await;
    let mut event = Event::new(
        EventType::FileUploaded,
        &src,
        serde_json::json!({"video_id": "v1", "size": 42}),
    );
    event.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
    bus.publish(&event).await.expect("publish");
    for (seen, who) in [(&one, "subscriber 1"), (&two, "subscriber 2")] {
        assert_eq!(
            await_count(seen, 1, who).await,
            vec![event.clone()],
            "{who} got it once, intact"
        );
    }
}

/// In a queue group each event reaches exactly one member; all arrive.
pub async fn queue_group_shares_the_work(bus: &dyn EventBus) {
    let src = source();
    let (a, b): (Seen, Seen) = Default::default();
    let subject = EventType::JobSubmitted.subject();
    let group = format!("workers-{src}");
    let _sa = bus
        .subscribe(subject, Some(&group), recorder(src.clone(), a.clone()))
        .await
        .expect("member a");
    let _sb = bus
        .subscribe(subject, Some(&group), recorder(src.clone(), b.clone()))
        .await
        .expect("member b");
    rt::sleep(Duration::from_millis(100)).await;
    let n = 40;
    for i in 0..n {
        let event = Event::new(
            EventType::JobSubmitted,
            &src,
            serde_json::json!({ "job": i }),
        );
        bus.publish(&event).await.expect("publish");
    }
    let started = rt::now();
    loop {
        let total = a.lock().expect("a").len() + b.lock().expect("b").len();
        if total >= n {
            break;
        }
        assert!(
            rt::now() - started < DELIVERY_TIMEOUT,
            "queue group: only {total} of {n} delivered"
        );
        rt::sleep(Duration::from_millis(10)).await;
    }
    rt::sleep(Duration::from_millis(200)).await;
    let mut ids: Vec<String> = a
        .lock()
        .expect("a")
        .iter()
        .chain(b.lock().expect("b").iter())
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ids.len(), n, "each event went to exactly one member");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event went to both members");
}

/// A handler that fails or panics keeps receiving the next events.
pub async fn handler_failures_do_not_end_the_subscription(bus: &dyn EventBus) {
    let src = source();
    let seen: Seen = Seen::default();
    let (src2, seen2) = (src.clone(), seen.clone());
    let flaky = handler(move |event: Event| {
        let (src, seen) = (src2.clone(), seen2.clone());
        async move {
            if event.source != src {
                return Ok(());
            }
            seen.lock().expect("seen").push(event.clone());
            match event.data["mode"].as_str() {
                Some("error") => Err("handler refused the event".into()),
                Some("panic") => panic!("handler panicked on purpose"),
                _ => Ok(()),
            }
        }
    });
    let subject = EventType::AlertTriggered.subject();
    let _sub = bus
        .subscribe(subject, None, flaky)
        .await
        .expect("subscribe");
    rt::sleep(Duration::from_millis(100)).await;
    for mode in ["error", "panic", "ok"] {
        let event = Event::new(
            EventType::AlertTriggered,
            &src,
            serde_json::json!({ "mode": mode }),
        );
        bus.publish(&event).await.expect("publish");
    }
    let got = await_count(&seen, 3, "after a failing and a panicking handler").await;
    let modes: Vec<_> = got
        .iter()
        .map(|e| e.data["mode"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        modes,
        ["error", "panic", "ok"],
        "delivery goes on, in order"
    );
}

/// Dropping a subscription stops its deliveries.
pub async fn unsubscribe_stops_delivery(bus: &dyn EventBus) {
    let src = source();
    let seen = Seen::default();
    let subject = EventType::MetadataDeleted.subject();
    let sub = bus
        .subscribe(subject, None, recorder(src.clone(), seen.clone()))
        .await
        .expect("subscribe");
    rt::sleep(Duration::from_millis(100)).await;
    bus.publish(&Event::new(
        EventType::MetadataDeleted,
        &src,
        serde_json::json!({}),
    ))
    .await
    .expect("publish");
    await_count(&seen, 1, "before unsubscribing").await;
    sub.unsubscribe();
    rt::sleep(Duration::from_millis(100)).await;
    bus.publish(&Event::new(
        EventType::MetadataDeleted,
        &src,
        serde_json::json!({}),
    ))
    .await
    .expect("publish");
    rt::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen.lock().expect("seen").len(),
        1,
        "nothing after unsubscribe"
    );
}

/// Bad subjects and group names are refused.
pub async fn refuses_invalid_names(bus: &dyn EventBus) {
    let noop = handler(|_| async { Ok(()) });
    for bad in ["", "a..b", "has space", ".lead", "trail."] {
        let err = bus.subscribe(bad, None, noop.clone()).await.expect_err(bad);
        assert!(matches!(err, BusError::InvalidName(_)), "{bad:?}: {err}");
    }
    let err = bus
        .subscribe("streamgate.v1.ok", Some("bad group"), noop)
        .await
        .expect_err("group");
    assert!(matches!(err, BusError::InvalidName(_)), "{err}");
}

/// After `close`, publishing fails with [`BusError::Closed`].
pub async fn closed_bus_refuses_publish(bus: &dyn EventBus) {
    bus.close().await;
    let err = bus
        .publish(&Event::new(
            EventType::JobFailed,
            &source(),
            serde_json::json!({}),
        ))
        .await;
    assert_eq!(err, Err(BusError::Closed), "publish after close");
}
