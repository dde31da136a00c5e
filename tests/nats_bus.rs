//! The NATS event bus against real servers: the shared `NATS_URL` one
//! (default `nats://127.0.0.1:4222`, must have JetStream) and private children
//! started, killed and restarted by the tests. An unreachable server fails the tests.
#![cfg(not(madsim))] // async-nats is a production-edge dependency only

#[path = "nats_bus/server.rs"]
mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamgate::bus::nats::{ConnectionStatus, JetStreamOpts, NatsBus, NatsOpts};
use streamgate::bus::{BusError, Event, EventBus, EventType, handler};
use streamgate::rt;
use streamgate_testkit::bus_contract;
use streamgate_testkit::nats_url;

use server::NatsServer;

/// Fails the test, loudly, when the shared server is not there.
async fn require_server(url: &str) {
    let probe = rt::timeout(Duration::from_secs(3), async_nats::connect(url)).await;
    match probe {
        Ok(Ok(client)) => drop(client),
        Ok(Err(e)) => panic!(
            "NATS server unreachable at {url}: {e} (start `nats-server -js` or set NATS_URL)"
        ),
        Err(rt::Elapsed) => panic!("NATS server at {url} did not answer within 3 s (set NATS_URL)"),
    }
}

/// A unique tag per run, so runs on a shared server never meet.
fn run_tag() -> String {
    format!("t{}", &rt::random_hex128()[..12])
}

fn core_opts(url: &str) -> NatsOpts {
    NatsOpts {
        url: url.to_owned(),
        client_name: "streamgate-tests".to_owned(),
        reconnect_attempts_max: 200,
        reconnect_wait_ms: 100,
        reconnect_jitter_ms: 50,
        ..NatsOpts::default()
    }
}

/// JetStream over a stream of its own, under a subject prefix of its own.
fn jetstream_opts(url: &str, tag: &str) -> NatsOpts {
    NatsOpts {
        subject_prefix: Some(tag.to_owned()),
        jetstream: Some(JetStreamOpts {
            stream: format!("SG_{tag}"),
            max_age_secs: 3_600,
            ack_wait_ms: 2_000,
            nak_delay_ms: 1_000,
            inactive_threshold_secs: 60,
            ..JetStreamOpts::default()
        }),
        ..core_opts(url)
    }
}

async fn delete_stream(url: &str, tag: &str) {
    let client = async_nats::connect(url).await.expect("connect for cleanup");
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("SG_{tag}"))
        .await;
}

/// Records how often each event id reached the handler, in arrival order.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<Vec<String>>>);

impl Tally {
    fn handler(&self, source: &str) -> streamgate::bus::Handler {
        let (seen, source) = (self.0.clone(), source.to_owned());
        handler(move |event: Event| {
            let (seen, source) = (seen.clone(), source.clone());
            async move {
                if event.source == source {
                    seen.lock().expect("tally").push(event.id);
                }
                Ok(())
            }
        })
    }

    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.0.lock().expect("tally").iter() {
            *counts.entry(id.clone()).or_insert(0) += 1;
        }
        counts
    }

    fn len(&self) -> usize {
        self.0.lock().expect("tally").len()
    }

    /// Waits until `done` holds or `limit` passes.
    async fn wait(&self, limit: Duration, done: impl Fn(&HashMap<String, usize>) -> bool) {
        let started = rt::now();
        while !done(&self.counts()) && rt::now() - started < limit {
            rt::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn numbered(source: &str, i: usize) -> Event {
    Event::new(
        EventType::JobSubmitted,
        source,
        serde_json::json!({ "n": i }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_bus_meets_the_contract() {
    let url = nats_url();
    require_server(&url).await;
    let bus = NatsBus::connect(core_opts(&url)).await.expect("connect");
    bus_contract::run_all(Arc::new(bus)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_bus_meets_the_contract() {
    let url = nats_url();
    require_server(&url).await;
    let tag = run_tag();
    let bus = NatsBus::connect(jetstream_opts(&url, &tag))
        .await
        .expect("connect (does the server run with -js?)");
    bus_contract::run_all(Arc::new(bus)).await;
    delete_stream(&url, &tag).await;
}

/// Publishes `n` numbered events, SIGKILLing the server after `n / 3` and
/// restarting it 300 ms later; returns (ok, failed) ids in order.
async fn publish_through_a_restart(
    bus: &NatsBus,
    server: &mut NatsServer,
    source: &str,
    n: usize,
    retry_until_ok: bool,
) -> (Vec<String>, Vec<String>) {
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for i in 0..n {
        if i == n / 3 {
            server.kill();
            rt::sleep(Duration::from_millis(300)).await;
            server.restart().await;
        }
        let event = numbered(source, i);
        loop {
            match bus.publish(&event).await {
                Ok(()) => ok.push(event.id.clone()),
                Err(BusError::Unavailable(_)) if retry_until_ok => {
                    rt::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => failed.push(event.id.clone()),
            }
            break;
        }
        rt::sleep(Duration::from_millis(3)).await;
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_delivers_every_event_exactly_once_across_a_server_restart() {
    let mut server = NatsServer::start().await;
    let tag = run_tag();
    let opts = NatsOpts {
        publish_timeout_ms: 5_000,
        ..jetstream_opts(&server.url(), &tag)
    };
    let publisher = NatsBus::connect(opts.clone()).await.expect("publisher");
    let consumer = NatsBus::connect(opts).await.expect("consumer");
    let tally = Tally::default();
    let source = format!("restart-{tag}");
    let _sub = consumer
        .subscribe(
            EventType::JobSubmitted.subject(),
            Some("workers"),
            tally.handler(&source),
        )
        .await
        .expect("subscribe");
    let n = 300;
    let (ok, failed) = publish_through_a_restart(&publisher, &mut server, &source, n, true).await;
    assert_eq!(
        (ok.len(), failed.len()),
        (n, 0),
        "every publish acknowledged in the end"
    );
    tally
        .wait(Duration::from_secs(30), |c| {
            ok.iter().all(|id| c.contains_key(id))
        })
        .await;
    // Room for redeliveries (ack_wait is 2 s) to show up as duplicates.
    rt::sleep(Duration::from_secs(3)).await;
    let counts = tally.counts();
    let missing = ok.iter().filter(|id| !counts.contains_key(*id)).count();
    let doubled: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    let (p, c) = (publisher.stats(), consumer.stats());
    eprintln!("publisher {p:?}\nconsumer  {c:?}");
    assert_eq!(missing, 0, "no event lost");
    assert!(doubled.is_empty(), "no event handled twice: {doubled:?}");
    assert_eq!(tally.len(), n, "exactly once");
    assert!(
        c.disconnects >= 1 && c.reconnects >= 1,
        "the consumer lived through the restart"
    );
    assert_eq!(consumer.status(), ConnectionStatus::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_accounts_for_every_event_across_a_server_restart() {
    let mut server = NatsServer::start().await;
    // One connection publishes and subscribes: the server resubscribes it
    // before anything it buffered, and each confirmation is a round trip.
    let bus = NatsBus::connect(NatsOpts {
        confirm_publish: true,
        publish_timeout_ms: 1_000,
        ..core_opts(&server.url())
    })
    .await
    .expect("connect");
    let tally = Tally::default();
    let source = format!("restart-{}", run_tag());
    let _sub = bus
        .subscribe(
            EventType::JobSubmitted.subject(),
            None,
            tally.handler(&source),
        )
        .await
        .expect("subscribe");
    let n = 300;
    let (ok, failed) = publish_through_a_restart(&bus, &mut server, &source, n, false).await;
    tally
        .wait(Duration::from_secs(10), |c| {
            ok.iter().all(|id| c.contains_key(id))
        })
        .await;
    rt::sleep(Duration::from_millis(500)).await;
    let counts = tally.counts();
    let stats = bus.stats();
    let lost: Vec<_> = ok.iter().filter(|id| !counts.contains_key(*id)).collect();
    let failed_yet_delivered = failed.iter().filter(|id| counts.contains_key(*id)).count();
    let delivered_ok = ok.len() - lost.len();
    eprintln!(
        "published {n}: delivered {} (of them {failed_yet_delivered} reported failed), \
         reported failed {}, silently lost {}; {stats:?}",
        tally.len(),
        failed.len(),
        lost.len()
    );
    assert!(
        counts.values().all(|c| *c == 1),
        "core delivers at most once"
    );
    assert!(
        lost.is_empty(),
        "a confirmed publish is delivered: {lost:?}"
    );
    assert_eq!(
        delivered_ok + failed.len(),
        n,
        "delivered + reported failed == published"
    );
    assert_eq!(
        stats.publish_failures,
        failed.len() as u64,
        "the bus counts its failures"
    );
    assert!(stats.disconnects >= 1 && stats.reconnects >= 1, "{stats:?}");
    assert!(
        stats.delivered >= delivered_ok as u64,
        "the subscription survived the reconnect"
    );
    assert_eq!(bus.status(), ConnectionStatus::Connected);
}

/// Garbage on an event subject is counted and skipped, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_delivery_goes_on() {
    let url = nats_url();
    require_server(&url).await;
    let tag = run_tag();
    for opts in [
        NatsOpts {
            subject_prefix: Some(tag.clone()),
            ..core_opts(&url)
        },
        jetstream_opts(&url, &tag),
    ] {
        let mode = if opts.jetstream.is_some() {
            "jetstream"
        } else {
            "core"
        };
        let bus = NatsBus::connect(opts).await.expect("connect");
        let tally = Tally::default();
        let source = format!("malformed-{tag}");
        let subject = EventType::FileUploaded.subject();
        let _sub = bus
            .subscribe(subject, None, tally.handler(&source))
            .await
            .expect("subscribe");
        rt::sleep(Duration::from_millis(100)).await;
        let garbage: [&[u8]; 3] = [
            b"not json at all",
            br#"{"id":"x","type":"no_such_type","source":"s","time":1,"data":{}}"#,
            b"{\"truncated\":",
        ];
        for raw in garbage {
            bus.client()
                .publish(bus.wire_subject(subject), bytes::Bytes::from_static(raw))
                .await
                .expect("raw publish");
        }
        let event = Event::new(EventType::FileUploaded, &source, serde_json::json!({}));
        bus.publish(&event).await.expect("publish after garbage");
        tally
            .wait(Duration::from_secs(5), |c| c.contains_key(&event.id))
            .await;
        assert_eq!(tally.len(), 1, "{mode}: the valid event still arrives");
        assert_eq!(bus.stats().malformed_events, 3, "{mode}: garbage counted");
        bus.close().await;
    }
    delete_stream(&url, &tag).await;
}

/// With the server gone, publishing fails fast once the buffer is full, and
/// a closed bus says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_bounded_when_the_server_is_gone() {
    let mut server = NatsServer::start().await;
    let bus = NatsBus::connect(NatsOpts {
        publish_buffer_capacity: 8,
        publish_timeout_ms: 200,
        reconnect_wait_ms: 1_000,
        ..core_opts(&server.url())
    })
    .await
    .expect("connect");
    server.kill();
    let started = rt::now();
    let mut first_error = None;
    for i in 0..200 {
        if let Err(e) = bus.publish(&numbered("bounded", i)).await {
            first_error = Some(e);
            break;
        }
    }
    let waited = rt::now() - started;
    match first_error {
        Some(BusError::Unavailable(why)) => assert!(why.contains("buffer full"), "{why}"),
        other => panic!("expected Unavailable(publish buffer full), got {other:?}"),
    }
    assert!(waited < Duration::from_secs(3), "failed fast: {waited:?}");
    assert_eq!(bus.status(), ConnectionStatus::Disconnected);
    assert!(bus.stats().publish_failures >= 1);
    rt::timeout(Duration::from_secs(10), bus.close())
        .await
        .expect("close returns while disconnected");
    let after = bus.publish(&numbered("bounded", 0)).await;
    assert_eq!(after, Err(BusError::Closed));
}

/// A subscription whose buffer overflows surfaces SlowConsumer and counts the drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drops_are_counted() {
    let url = nats_url();
    require_server(&url).await;
    let tag = run_tag();
    let bus = NatsBus::connect(NatsOpts {
        subject_prefix: Some(tag.clone()),
        subscription_capacity: 4,
        ..core_opts(&url)
    })
    .await
    .expect("connect");
    let tally = Tally::default();
    let source = format!("slow-{tag}");
    let slow = {
        let inner = tally.handler(&source);
        handler(move |event| {
            let inner = inner.clone();
            async move {
                rt::sleep(Duration::from_millis(20)).await;
                inner(event).await
            }
        })
    };
    let _sub = bus
        .subscribe(EventType::JobSubmitted.subject(), None, slow)
        .await
        .expect("subscribe");
    rt::sleep(Duration::from_millis(100)).await;
    let n = 100;
    for i in 0..n {
        bus.publish(&numbered(&source, i)).await.expect("publish");
    }
    bus.client().flush().await.expect("flush");
    let started = rt::now();
    while (tally.len() as u64) + bus.stats().dropped_messages < n as u64
        && rt::now() - started < Duration::from_secs(10)
    {
        rt::sleep(Duration::from_millis(50)).await;
    }
    let stats = bus.stats();
    eprintln!("{stats:?}");
    assert!(stats.slow_consumer_events >= 1, "{stats:?}");
    assert_eq!(
        tally.len() as u64 + stats.dropped_messages,
        n as u64,
        "every event accounted for"
    );
}
