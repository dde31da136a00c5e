//! Publish-to-deliver throughput of the event buses against their baselines,
//! measured in one run and reported as ratios: NatsBus vs raw async-nats (same
//! JSON), MemoryBus vs a tokio broadcast channel.
//!
//! Run pinned, one core each (see docs/benchmarks.md): start `taskset -c 1 nats-server -p 4333`,
//! then `NATS_URL=nats://127.0.0.1:4333 taskset -c 0 cargo bench --bench bus_throughput`
//! (`-- --quick`: one round of a tenth of the events).
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
mod support;

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

    use crate::support::{self, Ratio, Rounds};

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

    /// What each round measures, in this order (pairs: subject, baseline).
    const PATHS: [&str; 4] = ["nats bus", "raw", "memory bus", "broadcast"];

    async fn run(opts: support::Opts) -> anyhow::Result<()> {
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
        let scale = if opts.quick { 10 } else { 1 };
        let nats_events = events(NATS_EVENTS / scale);
        let memory_events = events(MEMORY_EVENTS / scale);
        // One warm-up round (connections, allocator, caches), not counted.
        let rounds = Rounds::new(opts, ROUNDS, 1, Duration::ZERO);
        let rates = rounds
            .interleaved(PATHS.len(), async |path, _| match path {
                0 => {
                    let tag = format!("bench{}", &rt::random_hex128()[..8]);
                    let bus = NatsBus::connect(NatsOpts {
                        url: url.clone(),
                        subject_prefix: Some(tag),
                        ..NatsOpts::default()
                    })
                    .await
                    .with_context(|| format!("NATS at {url}"))?;
                    let rate = through_bus(&bus, &nats_events).await;
                    bus.close().await;
                    rate
                }
                1 => {
                    let tag = format!("bench{}", &rt::random_hex128()[..8]);
                    let subject = format!("{tag}raw.{}", EventType::JobSubmitted.subject());
                    through_raw_nats(&url, &subject, &nats_events).await
                }
                2 => through_bus(&MemoryBus::new(), &memory_events).await,
                _ => through_broadcast(&memory_events).await,
            })
            .await?;
        for round in 0..rounds.rounds {
            let line: Vec<String> = PATHS
                .iter()
                .zip(&rates)
                .map(|(name, r)| format!("{name} {:.0}/s", r[round]))
                .collect();
            println!("round {}: {}", round + 1, line.join(", "));
        }
        let [bus, raw, mem, bc] = [0, 1, 2, 3].map(|i| support::median(&rates[i]));
        println!(
            "median of {} rounds (events/s, publish of first to delivery of last):",
            rounds.rounds
        );
        println!(
            "  NatsBus   {bus:>9.0}  raw async-nats  {raw:>9.0}  ratio {}, paired {} (target >= 0.90x)",
            Ratio::of(bus, raw),
            support::paired_ratio(&rates[0], &rates[1]),
        );
        println!(
            "  MemoryBus {mem:>9.0}  tokio broadcast {bc:>9.0}  ratio {}, paired {} (target >= 1.00x)",
            Ratio::of(mem, bc),
            support::paired_ratio(&rates[2], &rates[3]),
        );
        Ok(())
    }

    pub fn main() -> anyhow::Result<()> {
        let opts = support::opts();
        support::current_thread()?.block_on(run(opts))
    }
}
