//! Publish-to-deliver throughput of the event buses against their baselines,
//! measured in one run and reported as ratios: NatsBus vs raw async-nats (same
//! JSON), MemoryBus vs a tokio broadcast channel.
//!
//! Run pinned, one core each (see docs/benchmarks.md): start `taskset -c 1 nats-server -p 4333`,
//! then `NATS_URL=nats://127.0.0.1:4333 taskset -c 0 cargo bench --bench bus_throughput`.
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    bench::main()
}

/// Nothing to measure inside the simulator (async-nats is not built there).
#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
mod bench {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use anyhow::Context as _;
    use futures::StreamExt as _;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::bus::nats::{NatsBus, NatsOpts};
    use streamgate::bus::{Event, EventBus, EventType, handler};
    use streamgate::rt;
    use tokio::sync::Notify;

    const ROUNDS: usize = 7;
    const NATS_EVENTS: usize = 50_000;
    const MEMORY_EVENTS: usize = 200_000;

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new(
                    EventType::JobSubmitted,
                    "bench",
                    serde_json::json!({ "job": i, "video_id": "v-0123456789", "preset": "720p" }),
                )
            })
            .collect()
    }

    /// Counts deliveries and wakes the waiter at `target`.
    #[derive(Clone)]
    struct Done {
        count: Arc<AtomicUsize>,
        notify: Arc<Notify>,
        target: usize,
    }

    impl Done {
        fn new(target: usize) -> Self {
            Self {
                count: Arc::default(),
                notify: Arc::default(),
                target,
            }
        }

        fn hit(&self) {
            if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
                self.notify.notify_one();
            }
        }

        async fn wait(&self) -> anyhow::Result<()> {
            rt::timeout(Duration::from_secs(120), self.notify.notified())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "only {} of {} delivered",
                        self.count.load(Ordering::Relaxed),
                        self.target
                    )
                })
        }
    }

    /// Events per second through `bus`, publish of the first to delivery of the last.
    async fn through_bus(bus: &dyn EventBus, events: &[Event]) -> anyhow::Result<f64> {
        let done = Done::new(events.len());
        let d = done.clone();
        let sub = bus
            .subscribe(
                EventType::JobSubmitted.subject(),
                None,
                handler(move |_event| {
                    d.hit();
                    async { Ok(()) }
                }),
            )
            .await?;
        rt::sleep(Duration::from_millis(50)).await;
        let started = rt::now();
        for event in events {
            bus.publish(event).await?;
        }
        done.wait().await?;
        let secs = (rt::now() - started).as_secs_f64();
        sub.unsubscribe();
        Ok(events.len() as f64 / secs)
    }

    /// The same through a bare async-nats client: encode, publish, decode.
    async fn through_raw_nats(url: &str, subject: &str, events: &[Event]) -> anyhow::Result<f64> {
        let client = async_nats::connect(url).await?;
        let mut subscriber = client.subscribe(subject.to_owned()).await?;
        let done = Done::new(events.len());
        let d = done.clone();
        let task = rt::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if Event::decode(&message.payload).is_ok() {
                    d.hit();
                }
            }
        });
        client.flush().await?;
        rt::sleep(Duration::from_millis(50)).await;
        let started = rt::now();
        for event in events {
            let payload = bytes::Bytes::from(event.encode()?);
            client.publish(subject.to_owned(), payload).await?;
        }
        client.flush().await?;
        done.wait().await?;
        let secs = (rt::now() - started).as_secs_f64();
        task.abort();
        Ok(events.len() as f64 / secs)
    }

    /// The same through a tokio broadcast channel (capacity for every event, so none lag).
    async fn through_broadcast(events: &[Event]) -> anyhow::Result<f64> {
        let (tx, mut rx) = tokio::sync::broadcast::channel::<Event>(events.len());
        let done = Done::new(events.len());
        let d = done.clone();
        let task = rt::spawn(async move {
            while let Ok(_event) = rx.recv().await {
                d.hit();
            }
        });
        let started = rt::now();
        for event in events {
            tx.send(event.clone()).context("broadcast send")?;
        }
        done.wait().await?;
        let secs = (rt::now() - started).as_secs_f64();
        task.abort();
        Ok(events.len() as f64 / secs)
    }

    fn median(mut xs: Vec<f64>) -> f64 {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    }

    async fn run() -> anyhow::Result<()> {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let nats_events = events(NATS_EVENTS);
        let memory_events = events(MEMORY_EVENTS);
        let (mut bus_rates, mut raw_rates, mut mem_rates, mut bc_rates) =
            (vec![], vec![], vec![], vec![]);
        // Round 0 warms up (connections, allocator, caches) and is not counted.
        for round in 0..=ROUNDS {
            let tag = format!("bench{}", &rt::random_hex128()[..8]);
            let bus = NatsBus::connect(NatsOpts {
                url: url.clone(),
                subject_prefix: Some(tag.clone()),
                ..NatsOpts::default()
            })
            .await
            .with_context(|| format!("NATS at {url}"))?;
            // Alternate the order so warm-up and drift do not favour one side.
            let raw_subject = format!("{tag}raw.{}", EventType::JobSubmitted.subject());
            if round % 2 == 0 {
                bus_rates.push(through_bus(&bus, &nats_events).await?);
                raw_rates.push(through_raw_nats(&url, &raw_subject, &nats_events).await?);
            } else {
                raw_rates.push(through_raw_nats(&url, &raw_subject, &nats_events).await?);
                bus_rates.push(through_bus(&bus, &nats_events).await?);
            }
            bus.close().await;
            let memory = MemoryBus::new();
            if round % 2 == 0 {
                mem_rates.push(through_bus(&memory, &memory_events).await?);
                bc_rates.push(through_broadcast(&memory_events).await?);
            } else {
                bc_rates.push(through_broadcast(&memory_events).await?);
                mem_rates.push(through_bus(&memory, &memory_events).await?);
            }
            if round == 0 {
                for rates in [
                    &mut bus_rates,
                    &mut raw_rates,
                    &mut mem_rates,
                    &mut bc_rates,
                ] {
                    rates.clear();
                }
                println!("warm-up round done");
                continue;
            }
            let i = round - 1;
            println!(
                "round {round}: nats bus {:.0}/s raw {:.0}/s | memory bus {:.0}/s broadcast {:.0}/s",
                bus_rates[i], raw_rates[i], mem_rates[i], bc_rates[i]
            );
        }
        // Paired ratios (same round, back to back) resist drift better than a
        // ratio of medians; both are printed.
        let paired = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        let (nats_paired, mem_paired) = (
            paired(&bus_rates, &raw_rates),
            paired(&mem_rates, &bc_rates),
        );
        let (bus, raw, mem, bc) = (
            median(bus_rates),
            median(raw_rates),
            median(mem_rates),
            median(bc_rates),
        );
        println!("median of {ROUNDS} rounds (events/s, publish of first to delivery of last):");
        println!(
            "  NatsBus   {bus:>9.0}  raw async-nats  {raw:>9.0}  ratio {:.2}x, paired {nats_paired:.2}x (target >= 0.90x)",
            bus / raw
        );
        println!(
            "  MemoryBus {mem:>9.0}  tokio broadcast {bc:>9.0}  ratio {:.2}x, paired {mem_paired:.2}x (target >= 1.00x)",
            mem / bc
        );
        Ok(())
    }

    pub fn main() -> anyhow::Result<()> {
        if std::env::args().any(|a| a == "--list") {
            return Ok(());
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run())
    }
}
