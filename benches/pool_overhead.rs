//! Unary calls through the client pool and the full middleware stack (both
//! sides) against a raw tonic channel to a bare server, measured in the same
//! run, rounds interleaved: throughput and p50/p99 at concurrency 1 and 64,
//! printed as ratios.
//!
//! `cargo bench --bench pool_overhead`. Server and client each run on their
//! own single-threaded runtime (their own thread); for steadier figures pin
//! the process to two cores (`taskset -c 0,1`).
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    bench::main()
}

/// Nothing to measure inside the simulator.
#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
mod bench {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use streamgate::bus::memory::MemoryBus;
    use streamgate::client::{ClientPool, PoolConfig};
    use streamgate::kernel::{Runtime, ServiceKind};
    use streamgate::middleware::auth::Keyring;
    use streamgate::proto::CacheGetRequest;
    use streamgate::proto::cache_service_client::CacheServiceClient;
    use streamgate::proto::cache_service_server::CacheServiceServer;
    use streamgate::registry::Registry;
    use streamgate::registry::memory::MemoryRegistry;
    use streamgate::rt::{self, transport};
    use streamgate::services::cache::CacheServer;
    use streamgate::services::{self, ServiceOpts};
    use tonic::service::Routes;

    const ROUND: Duration = Duration::from_secs(2);
    const ROUNDS: usize = 3;

    struct Figures {
        per_sec: f64,
        p50: Duration,
        p99: Duration,
    }

    /// Runs `concurrency` loops of calls for [`ROUND`]; `call` makes one call.
    async fn measure<C, F>(concurrency: usize, make: impl Fn() -> C, call: F) -> Figures
    where
        C: Send + 'static,
        F: Fn(C) -> futures::future::BoxFuture<'static, C> + Clone + Send + 'static,
    {
        let end = rt::now() + ROUND;
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (mut client, call) = (make(), call.clone());
            tasks.push(rt::spawn(async move {
                let mut latencies = Vec::new();
                while rt::now() < end {
                    let started = rt::now();
                    client = call(client).await;
                    latencies.push(rt::now() - started);
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("worker"));
        }
        all.sort_unstable();
        let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        Figures {
            per_sec: all.len() as f64 / ROUND.as_secs_f64(),
            p50: pick(0.5),
            p99: pick(0.99),
        }
    }

    fn request() -> tonic::Request<CacheGetRequest> {
        let mut req = tonic::Request::new(CacheGetRequest {
            key: "bench-key".into(),
        });
        req.set_timeout(Duration::from_secs(5));
        req
    }

    /// Starts both servers on a runtime of their own; returns (bare, full) addresses.
    fn start_servers(
        keys: Keyring,
        registry: Arc<MemoryRegistry>,
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    // Bare: the generated server alone, no layers.
                    let listener = transport::Listener::bind("127.0.0.1:0".parse().expect("addr"))
                        .await
                        .expect("bind");
                    let bare = listener.local_addr().expect("addr");
                    let routes = Routes::new(CacheServiceServer::new(CacheServer::new(
                        Default::default(),
                    )));
                    rt::spawn(transport::serve(
                        listener,
                        routes,
                        tower::layer::util::Identity::new(),
                        std::future::pending(),
                    ));
                    // Full: the service as StreamGate runs it (all server layers).
                    let pool =
                        ClientPool::new(registry.clone(), PoolConfig::new(keys.clone(), "cache"));
                    let runtime_handles = Runtime {
                        registry: registry.clone(),
                        bus: Arc::new(MemoryBus::new()),
                        blobs: Arc::new(streamgate::blob::memory::MemoryBlobStore::new()),
                        pool,
                        keys,
                        metrics: Default::default(),
                    };
                    let mut opts = ServiceOpts::new(ServiceKind::Cache, [127, 0, 0, 1].into());
                    opts.listen.set_port(0);
                    // Measure the limiter's cost, not its refusals.
                    opts.rate_limit = (u32::MAX, 1e12);
                    // No kernel heartbeats here: a TTL longer than the run.
                    opts.check_interval = Duration::from_secs(3600);
                    let running = services::start(&opts, &runtime_handles)
                        .await
                        .expect("service");
                    registry.register(running.info()).await.expect("register");
                    tx.send((bare, running.local_addr())).expect("report");
                    std::future::pending::<()>().await;
                });
            })?;
        Ok(rx.recv()?)
    }

    pub fn main() -> anyhow::Result<()> {
        let keys = Keyring::generate("bench");
        let registry = Arc::new(MemoryRegistry::new());
        let (bare, _full) = start_servers(keys.clone(), registry.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let pool = ClientPool::new(registry, PoolConfig::new(keys, "bench"));
            let pooled = pool.channel("cache").await.expect("pool channel");
            let raw = transport::channel(bare);
            println!("unary CacheService/Get, {ROUNDS} interleaved rounds of {ROUND:?} each");
            println!("{:>11} | {:>22} | {:>22} | ratio (pool / raw)", "concurrency", "raw tonic: calls/s p50 p99", "pool+middleware");
            for concurrency in [1usize, 64] {
                let (mut raw_runs, mut pool_runs) = (Vec::new(), Vec::new());
                for _ in 0..ROUNDS {
                    let r = raw.clone();
                    raw_runs.push(
                        measure(concurrency, move || CacheServiceClient::new(r.clone()), |mut c| {
                            Box::pin(async move {
                                c.get(request()).await.expect("raw call");
                                c
                            })
                        })
                        .await,
                    );
                    let p = pooled.clone();
                    pool_runs.push(
                        measure(concurrency, move || CacheServiceClient::new(p.clone()), |mut c| {
                            Box::pin(async move {
                                c.get(request()).await.expect("pool call");
                                c
                            })
                        })
                        .await,
                    );
                }
                let median = |runs: &mut Vec<Figures>| {
                    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
                    runs.remove(runs.len() / 2)
                };
                let (r, p) = (median(&mut raw_runs), median(&mut pool_runs));
                println!(
                    "{concurrency:>11} | {:>8.0} {:>6.0?} {:>6.0?} | {:>8.0} {:>6.0?} {:>6.0?} | throughput {:.3}x, p99 {:.3}x",
                    r.per_sec, r.p50, r.p99, p.per_sec, p.p50, p.p99,
                    p.per_sec / r.per_sec,
                    p.p99.as_secs_f64() / r.p99.as_secs_f64(),
                );
            }
        });
        Ok(())
    }
}
