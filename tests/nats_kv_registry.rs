//! The NATS KV registry against a real NATS server with JetStream (`NATS_URL`,
//! default `nats://127.0.0.1:4222`): an unreachable server fails the tests.
//!
//! Each test uses its own bucket, deleted at the end, so runs do not interfere.
#![cfg(not(madsim))]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{Kernel, Plugin};
use streamgate::registry::nats_kv::bucket::{Bucket, Entry, KvError, Status, Watch};
use streamgate::registry::nats_kv::{NatsBucket, NatsKvRegistry, Options};
use streamgate::registry::{CheckKind, Registry, RegistryError};
use streamgate::rt;
use streamgate::services::{Common, ServiceConfig};
use streamgate::services::{ServiceKind, ServicePlugin};
use streamgate_testkit::registry_contract::{self, instance, unique_name};
use streamgate_testkit::{kv_contract, nats_url};

/// How long a kernel may take to re-register after the registry lost its
/// data: one heartbeat interval (1 s) to notice, plus round trips.
const RECOVERY_BOUND: Duration = Duration::from_secs(3);

/// A registry on a fresh bucket, and a raw handle on that bucket.
async fn setup() -> (
    Arc<NatsKvRegistry>,
    jetstream::kv::Store,
    jetstream::Context,
) {
    let mut opts = Options::new(nats_url());
    opts.bucket = format!("sgtest_{:016x}", rt::random_u64());
    opts.max_age = Duration::from_secs(120);
    let registry = NatsKvRegistry::connect(opts.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "NATS with JetStream must be reachable at {} for these tests \
                 (start `nats-server -js` or set NATS_URL): {e}",
                opts.url
            )
        });
    let client = async_nats::connect(opts.url.as_str())
        .await
        .expect("raw NATS connection");
    let js = jetstream::new(client);
    let store = js
        .get_key_value(opts.bucket.as_str())
        .await
        .expect("the registry created its bucket");
    (Arc::new(registry), store, js)
}

async fn teardown(js: &jetstream::Context, store: &jetstream::kv::Store) {
    js.delete_key_value(store.name.as_str())
        .await
        .expect("delete the test bucket");
}

/// Polls `discover(name)` until it returns `want` instances, or fails after `bound`.
async fn discoverable_within(
    registry: &dyn Registry,
    name: &str,
    want: usize,
    bound: Duration,
) -> Duration {
    let started = rt::now();
    loop {
        if let Ok(found) = registry.discover(name).await
            && found.len() == want
        {
            return rt::now() - started;
        }
        assert!(
            rt::now() - started <= bound,
            "{name}: {want} instance(s) not discoverable within {bound:?}"
        );
        rt::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nats_kv_registry_meets_the_contract() {
    let (registry, store, js) = setup().await;
    registry_contract::run_all(
        registry.clone(),
        registry_contract::Options {
            ttl_interval: Duration::from_secs(1),
            expiry_slack: Duration::from_millis(500),
            // An entry is fresh or expired: no warning state to set.
            set_status: None,
        },
    )
    .await;
    teardown(&js, &store).await;
}

/// The bucket seam under the registry meets the contract the simulator's
/// modelled server is held to (`sim/kv_node.rs` runs the same one).
#[tokio::test]
async fn the_real_bucket_meets_the_kv_contract() {
    let mut opts = Options::new(nats_url());
    opts.bucket = format!("sgtest_{:016x}", rt::random_u64());
    let bucket = NatsBucket::connect(&opts)
        .await
        .unwrap_or_else(|e| panic!("NATS with JetStream must be reachable at {}: {e}", opts.url));
    let client = async_nats::connect(opts.url.as_str())
        .await
        .expect("raw NATS connection");
    let js = jetstream::new(client);
    let name = opts.bucket.clone();
    let lose: kv_contract::Lose = Arc::new(move || {
        let (js, name) = (js.clone(), name.clone());
        Box::pin(async move {
            js.delete_key_value(name.as_str())
                .await
                .expect("delete the bucket");
        })
    });
    kv_contract::run_all(Arc::new(bucket), lose.clone()).await;
    lose().await;
}

#[tokio::test]
async fn ids_with_colons_and_dots_round_trip() {
    let (registry, store, js) = setup().await;
    let name = unique_name("kv-ipv6");
    let mut a = instance(&name, 7101, Duration::from_secs(5));
    a.id = format!("{name}-[::1]:7101").replace(['[', ']'], "");
    registry
        .register(&a)
        .await
        .expect("register an id with ':'");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()]
    );
    registry.heartbeat(&a.id).await.expect("heartbeat");
    registry.deregister(&a.id).await.expect("deregister");
    assert!(registry.discover(&name).await.expect("discover").is_empty());
    teardown(&js, &store).await;
}

#[tokio::test]
async fn lost_data_answers_not_found_and_re_registration_recovers() {
    let (registry, store, js) = setup().await;
    let name = unique_name("kv-loss");
    let a = instance(&name, 7102, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    registry.heartbeat(&a.id).await.expect("heartbeat");

    // The keys are wiped (stream purge): the registration is lost.
    store.stream.purge().await.expect("purge the bucket");
    assert!(registry.discover(&name).await.expect("discover").is_empty());
    let err = registry.heartbeat(&a.id).await.expect_err("lost");
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
    registry.register(&a).await.expect("register again");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()]
    );

    // The whole bucket is deleted: the registry re-creates it.
    js.delete_key_value(store.name.as_str())
        .await
        .expect("delete bucket");
    let err = registry
        .heartbeat(&a.id)
        .await
        .expect_err("lost with the bucket");
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
    registry.register(&a).await.expect("register again");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()]
    );
    registry.health().await.expect("healthy");
    teardown(&js, &store).await;
}

#[tokio::test]
async fn kernel_re_registers_after_the_bucket_is_wiped() {
    let (registry, store, js) = setup().await;
    let plugin = ServicePlugin::new(Common::ephemeral(), ServiceConfig::new(ServiceKind::Cache));
    let plugins = vec![Box::new(plugin) as Box<dyn Plugin>];
    let kernel = Kernel::start(Arc::new(MemoryBus::new()), registry.clone(), plugins)
        .await
        .expect("kernel starts");
    let name = kernel.registrations()[0].name.clone();
    assert_eq!(registry.discover(&name).await.expect("discover").len(), 1);

    for round in 0..2 {
        store.stream.purge().await.expect("purge the bucket");
        let took = discoverable_within(&*registry, &name, 1, RECOVERY_BOUND).await;
        eprintln!("round {round}: discoverable again after {took:?}");
    }
    js.delete_key_value(store.name.as_str())
        .await
        .expect("delete bucket");
    let took = discoverable_within(&*registry, &name, 1, RECOVERY_BOUND).await;
    eprintln!("bucket deleted: discoverable again after {took:?}");

    kernel.shutdown().await;
    assert!(
        registry.discover(&name).await.expect("discover").is_empty(),
        "a graceful stop deregisters at once"
    );
    teardown(&js, &store).await;
}

#[tokio::test]
async fn malformed_values_are_ignored_by_discover() {
    let (registry, store, js) = setup().await;
    let name = unique_name("kv-bad");
    let a = instance(&name, 7103, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    store
        .put(format!("{name}.garbage"), "not json".into())
        .await
        .expect("put garbage");
    let foreign = serde_json::json!({
        "info": instance(&name, 7104, Duration::from_secs(5)),
        "heartbeat_unix_ms": 0
    });
    store
        .put(format!("{name}.wrong-key"), foreign.to_string().into())
        .await
        .expect("put a record under the wrong key");
    store
        .put(format!("{name}.empty"), "".into())
        .await
        .expect("put an empty value");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()]
    );
    let r = registry
        .watch(&name, 0, Duration::from_millis(100))
        .await
        .expect("watch");
    assert_eq!(r.instances, vec![a.clone()]);
    teardown(&js, &store).await;
}

#[tokio::test]
async fn expiry_bound_and_watch_wakes_on_expiry() {
    let (registry, store, js) = setup().await;
    let name = unique_name("kv-expiry");
    let a = instance(&name, 7105, Duration::from_millis(500));
    registry.register(&a).await.expect("register");
    let registered = rt::now();
    let first = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert_eq!(first.instances.len(), 1);
    // Blocks until the TTL expiry (1 s), not the whole wait.
    let r = registry
        .watch(&name, first.index, Duration::from_secs(10))
        .await
        .expect("blocking watch");
    let took = rt::now() - registered;
    eprintln!("watch saw the expiry {took:?} after registration (TTL expiry 1 s)");
    assert!(r.instances.is_empty(), "expired");
    assert!(
        took >= Duration::from_millis(900),
        "not before the expiry: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(1500),
        "soon after the expiry: {took:?}"
    );
    assert!(r.index >= first.index, "the index does not go backwards");
    // Heartbeats of a passing instance do not wake a blocked watch.
    let b = instance(&name, 7106, Duration::from_secs(5));
    registry.register(&b).await.expect("register b");
    let now = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    let hb = {
        let (reg, id) = (registry.clone(), b.id.clone());
        rt::spawn(async move {
            for _ in 0..4 {
                rt::sleep(Duration::from_millis(100)).await;
                reg.heartbeat(&id).await.expect("heartbeat");
            }
        })
    };
    let started = rt::now();
    let quiet = registry
        .watch(&name, now.index, Duration::from_millis(800))
        .await
        .expect("quiet watch");
    assert!(
        rt::now() - started >= Duration::from_millis(700),
        "heartbeats did not wake it"
    );
    assert_eq!(quiet.instances, vec![b.clone()]);
    hb.await.expect("heartbeats");
    teardown(&js, &store).await;
}

#[tokio::test]
async fn reads_leave_no_consumers_behind() {
    let (registry, store, js) = setup().await;
    let name = unique_name("kv-consumers");
    let a = instance(&name, 7107, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    let started = rt::now();
    for _ in 0..50 {
        assert_eq!(registry.discover(&name).await.expect("discover").len(), 1);
    }
    let per_discover = (rt::now() - started) / 50;
    eprintln!("discover: {per_discover:?} each (1 instance)");
    let first = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    registry
        .watch(&name, first.index, Duration::from_millis(200))
        .await
        .expect("blocking watch");
    // The blocking watch's consumer is deleted in the background.
    let mut stream = js
        .get_stream(format!("KV_{}", store.name))
        .await
        .expect("stream");
    let started = rt::now();
    loop {
        let consumers = stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count;
        if consumers == 0 {
            break;
        }
        assert!(
            rt::now() - started < Duration::from_secs(2),
            "{consumers} consumer(s) left behind"
        );
        rt::sleep(Duration::from_millis(50)).await;
    }
    teardown(&js, &store).await;
}

#[tokio::test]
async fn unreachable_server_fails_fast_as_unavailable() {
    let mut opts = Options::new("nats://127.0.0.1:1");
    opts.connect_timeout = Duration::from_secs(1);
    let started = rt::now();
    let err = NatsKvRegistry::connect(opts)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
    assert!(
        rt::now() - started < Duration::from_secs(3),
        "bounded by connect_timeout"
    );
}

#[tokio::test]
async fn a_new_name_replaces_the_id_and_http_checks_are_refused() {
    let (registry, store, js) = setup().await;
    let (old, new) = (unique_name("kv-old"), unique_name("kv-new"));
    let a = instance(&old, 7108, Duration::from_secs(5));
    registry.register(&a).await.expect("register");
    let mut moved = a.clone();
    moved.name.clone_from(&new);
    registry
        .register(&moved)
        .await
        .expect("register under a new name");
    assert!(registry.discover(&old).await.expect("discover").is_empty());
    assert_eq!(
        registry.discover(&new).await.expect("discover"),
        vec![moved]
    );

    let mut http = instance(&new, 7109, Duration::from_secs(5));
    http.check.kind = CheckKind::Http {
        url: "http://127.0.0.1:7109/health".into(),
    };
    let err = registry.register(&http).await.expect_err("HTTP check");
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    let mut long = instance(&new, 7110, Duration::from_secs(100));
    long.check.timeout = Duration::from_secs(100);
    let err = registry
        .register(&long)
        .await
        .expect_err("TTL beyond max_age");
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    teardown(&js, &store).await;
}

/// Counts the calls a registry makes of its bucket.
struct Counting {
    inner: NatsBucket,
    gets: std::sync::atomic::AtomicUsize,
    updates: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Bucket for Counting {
    async fn status(&self) -> Result<Status, KvError> {
        self.inner.status().await
    }
    async fn ensure(&self) -> Result<bool, KvError> {
        self.inner.ensure().await
    }
    async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.entry(key).await
    }
    async fn put(&self, key: &str, value: bytes::Bytes) -> Result<u64, KvError> {
        self.inner.put(key, value).await
    }
    async fn update(&self, key: &str, value: bytes::Bytes, revision: u64) -> Result<u64, KvError> {
        self.updates
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.update(key, value, revision).await
    }
    async fn delete(&self, key: &str, expect: Option<u64>) -> Result<(), KvError> {
        self.inner.delete(key, expect).await
    }
    async fn keys(&self, filter: &str) -> Result<Vec<String>, KvError> {
        self.inner.keys(filter).await
    }
    async fn watch(&self, filter: &str) -> Result<Watch, KvError> {
        self.inner.watch(filter).await
    }
}

/// A heartbeat is one compare-and-set write while nobody else wrote the
/// key; after someone did, it reads the key first and still succeeds.
#[tokio::test]
async fn a_heartbeat_is_one_write_until_someone_else_writes() {
    let (_, store, js) = setup().await;
    let mut opts = Options::new(nats_url());
    opts.bucket = store.name.clone();
    opts.max_age = Duration::from_secs(120);
    let counting = Arc::new(Counting {
        inner: NatsBucket::connect(&opts).await.expect("bucket"),
        gets: Default::default(),
        updates: Default::default(),
    });
    let registry = NatsKvRegistry::assuming(opts, counting.clone()).expect("valid options");
    let name = unique_name("beat");
    let info = instance(&name, 7000, Duration::from_secs(5));
    registry.register(&info).await.expect("register");
    let counts = || {
        (
            counting.gets.load(std::sync::atomic::Ordering::SeqCst),
            counting.updates.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let before = counts();
    for _ in 0..3 {
        registry.heartbeat(&info.id).await.expect("heartbeat");
    }
    assert_eq!(
        counts(),
        (before.0, before.1 + 3),
        "three heartbeats, three writes, no reads"
    );
    // Someone else rewrites the entry (an operator, another process).
    let key = streamgate::registry::nats_kv::view::key(&info.name, &info.id);
    let current = store
        .entry(key.as_str())
        .await
        .expect("get")
        .expect("present");
    store
        .put(key.as_str(), current.value)
        .await
        .expect("outside write");
    let before = counts();
    registry
        .heartbeat(&info.id)
        .await
        .expect("heartbeat after an outside write");
    assert_eq!(
        counts(),
        (before.0 + 1, before.1 + 2),
        "refused write, read, write"
    );
    assert_eq!(
        registry.discover(&name).await.expect("discover").len(),
        1,
        "still registered"
    );
    registry
        .heartbeat(&info.id)
        .await
        .expect("and back to one write");
    teardown(&js, &store).await;
}
