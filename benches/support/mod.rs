//! What the benchmarks share: their command line (`--quick`), runtimes and
//! the threads that serve on them, StreamGate services started there, and
//! the in-run baseline: interleaved rounds, medians and ratios.
//!
//! Every benchmark measures its subject and a baseline in the same run,
//! rounds interleaved (every other round in reverse order, so drift and
//! warm-up favour neither), and prints ratios. For steadier figures pin the
//! process with `taskset`, as each benchmark's doc says. `-- --quick` runs
//! one short round: it shows the benchmark works, its figures are noise.
//! Without cargo bench's `--bench` flag (`cargo test --benches`) a benchmark
//! runs quick too.

// Each benchmark uses its part.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use streamgate::blob::BlobStore;
use streamgate::bus::memory::MemoryBus;
use streamgate::client::PoolConfig;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use tokio::runtime::Runtime;

/// How a benchmark was asked to run.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// One short round only.
    pub quick: bool,
}

/// The options on the command line; exits at once for `--list` (cargo's
/// listing of tests: a benchmark has none).
#[must_use]
pub fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        std::process::exit(0);
    }
    let has = |flag: &str| args.iter().any(|a| a == flag);
    Opts {
        quick: has("--quick") || !has("--bench"),
    }
}

/// The values after `flag` on the command line (`--profile 3 1000`), if given.
#[must_use]
pub fn flag_values(flag: &str, count: usize) -> Option<Vec<String>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == flag)?;
    let values = args.get(at + 1..at + 1 + count)?;
    Some(values.to_vec())
}

/// How long and how often each path is measured.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// Rounds counted (each measures every path once).
    pub rounds: usize,
    /// Rounds run first and not counted.
    pub warmup_rounds: usize,
    /// How long one measurement lasts (for benchmarks that measure for a time).
    pub round: Duration,
}

impl Rounds {
    /// `rounds` rounds of `round` each after `warmup_rounds`; in quick mode
    /// one round of at most 300 ms and no warm-up.
    #[must_use]
    pub fn new(opts: Opts, rounds: usize, warmup_rounds: usize, round: Duration) -> Self {
        if opts.quick {
            return Self {
                rounds: 1,
                warmup_rounds: 0,
                round: round.min(Duration::from_millis(300)),
            };
        }
        Self {
            rounds,
            warmup_rounds,
            round,
        }
    }

    /// Runs `measure(path, round)` for each of `paths` paths in every round,
    /// interleaved, odd rounds in reverse order; returns each path's
    /// results of the counted rounds, in round order.
    ///
    /// # Errors
    /// The first error of `measure`.
    pub async fn interleaved<T>(
        &self,
        paths: usize,
        mut measure: impl AsyncFnMut(usize, usize) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<Vec<T>>> {
        let mut results: Vec<Vec<T>> = (0..paths).map(|_| Vec::new()).collect();
        for round in 0..self.warmup_rounds + self.rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..paths).collect()
            } else {
                (0..paths).rev().collect()
            };
            for path in order {
                let result = measure(path, round).await?;
                if round >= self.warmup_rounds {
                    results[path].push(result);
                }
            }
        }
        Ok(results)
    }
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// When `values` is empty.
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    median_by(values.to_vec(), |v| *v)
}

/// The element of `values` with the median `key`.
///
/// # Panics
/// When `values` is empty.
#[must_use]
pub fn median_by<T>(mut values: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    assert!(!values.is_empty(), "a median of nothing");
    values.sort_by(|a, b| key(a).total_cmp(&key(b)));
    values.swap_remove(values.len() / 2)
}

/// The median of the per-round ratios `values[i] / baseline[i]`: rounds run
/// back to back, so this resists drift better than a ratio of medians.
#[must_use]
pub fn paired_ratio(values: &[f64], baseline: &[f64]) -> Ratio {
    let ratios: Vec<f64> = values.iter().zip(baseline).map(|(v, b)| v / b).collect();
    Ratio(median(&ratios))
}

/// `value` relative to `baseline`, printed as `0.973x`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(pub f64);

impl Ratio {
    /// `value / baseline`.
    #[must_use]
    pub fn of(value: f64, baseline: f64) -> Self {
        Self(value / baseline)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{:.3}x", self.0);
        f.pad(&text)
    }
}

/// A runtime on the calling thread alone.
///
/// # Errors
/// The runtime cannot be built.
pub fn current_thread() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A runtime with `workers` worker threads.
///
/// # Errors
/// The runtime cannot be built.
pub fn multi_thread(workers: usize) -> anyhow::Result<Runtime> {
    multi_thread_named(workers, "tokio-runtime-worker")
}

/// [`multi_thread`] with its threads (workers and blocking pool) named
/// `name`, so that their CPU time can be told from others' in `/proc`.
///
/// # Errors
/// The runtime cannot be built.
pub fn multi_thread_named(workers: usize, name: &str) -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// Runs `start` on `runtime` on a thread of its own, named `name`. `start`
/// returns what to hand back (addresses) and what to keep (the servers);
/// the thread then keeps the runtime and those running until the process
/// exits.
///
/// # Errors
/// The thread cannot be started, or `start` panicked.
pub fn serve_on_thread<T, K, F, Fut>(name: &str, runtime: Runtime, start: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    K: 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = (T, K)>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let (started, _serving) = start().await;
                if tx.send(started).is_ok() {
                    std::future::pending::<()>().await;
                }
            });
        })?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("the {name} thread failed to start"))
}

/// A service as a kernel plugin, with `common` and its config as `tweak`
/// leaves it.
#[must_use]
pub fn plugin(
    kind: ServiceKind,
    common: Common,
    tweak: impl FnOnce(&mut ServiceConfig),
) -> Box<dyn Plugin> {
    let mut config = ServiceConfig::new(kind);
    tweak(&mut config);
    Box::new(ServicePlugin::new(common, config))
}

/// Starts `plugins` as one node: a kernel on the in-memory `registry` and
/// `bus` (which other nodes of the benchmark may share) and `blobs`, its
/// pool calling as `caller` with `keys`.
///
/// # Panics
/// When the node does not start (a benchmark cannot go on).
pub async fn start_node(
    registry: Arc<MemoryRegistry>,
    bus: Arc<MemoryBus>,
    blobs: Arc<dyn BlobStore>,
    keys: Keyring,
    caller: &str,
    plugins: Vec<Box<dyn Plugin>>,
) -> Kernel {
    let seams = Seams {
        bus,
        registry,
        blobs,
    };
    Kernel::start_with(seams, PoolConfig::new(keys, caller), plugins)
        .await
        .expect("the node starts")
}

/// Where `node` serves `kind`.
///
/// # Panics
/// When `node` does not run `kind`.
#[must_use]
pub fn address(node: &Kernel, kind: ServiceKind) -> SocketAddr {
    let info = node
        .registrations()
        .iter()
        .find(|i| i.name == kind.name())
        .unwrap_or_else(|| panic!("the node runs no {kind}"));
    SocketAddr::new(
        info.address.parse().expect("an IP address is registered"),
        info.port,
    )
}

/// The auth service's signing secret in the benchmarks that go through the
/// gateway (set it on the auth plugin), for [`bearer`].
#[must_use]
pub fn auth_secret() -> streamgate::services::auth::Secret {
    streamgate::services::auth::Secret::new(vec![5u8; 32])
}

/// `Bearer <token>` of a day-long access token of the user `bench`, signed
/// with [`auth_secret`]: what every request of such a benchmark carries.
///
/// # Panics
/// When the token cannot be made (a benchmark cannot go on).
#[must_use]
pub fn bearer() -> &'static str {
    use streamgate::services::auth::token::{Kind, Tokens};
    static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BEARER.get_or_init(|| {
        let issued = Tokens::new(&auth_secret())
            .issue(
                "bench",
                Kind::Access,
                vec![],
                Duration::from_secs(24 * 3600),
                streamgate::rt::unix_ms(),
            )
            .expect("a token");
        format!("Bearer {}", issued.token)
    })
}
