//! The registry contract: what every [`Registry`] backend must do.
//!
//! Service names carry a random suffix, so runs against a shared server
//! (NATS, a Consul double) do not see each other.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use streamgate::registry::{HealthCheck, HealthStatus, Registry, RegistryError, ServiceInfo};
use streamgate::rt;

/// Puts instance `id` into a health state from outside, as the registry's
/// own check would (an HTTP check answering 429 is a warning; Consul's
/// `check/warn`, the memory registry's `set_status`).
pub type SetStatus = Arc<dyn Fn(String, HealthStatus) -> BoxFuture<'static, ()> + Send + Sync>;

/// How a backend is exercised.
#[derive(Clone)]
pub struct Options {
    /// TTL check interval to register with; the expiry check waits about
    /// `3 * ttl_interval` plus `expiry_slack`.
    pub ttl_interval: Duration,
    /// Extra time the backend may take to notice an expiry (its reaper's period).
    pub expiry_slack: Duration,
    /// How to put an instance into warning or critical. `None` only for a
    /// backend that has no such states besides its TTL (NATS KV: an entry
    /// is fresh or expired), where [`warning_instances_are_discovered`]
    /// does not apply.
    pub set_status: Option<SetStatus>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("ttl_interval", &self.ttl_interval)
            .field("expiry_slack", &self.expiry_slack)
            .field("set_status", &self.set_status.is_some())
            .finish()
    }
}

impl Options {
    /// The defaults (1 s TTL interval, 1 s slack) with `set_status`.
    #[must_use]
    pub fn with_status(set_status: SetStatus) -> Self {
        Self {
            ttl_interval: Duration::from_secs(1),
            expiry_slack: Duration::from_secs(1),
            set_status: Some(set_status),
        }
    }
}

/// A unique service name for one run.
#[must_use]
pub fn unique_name(base: &str) -> String {
    format!("{base}-{:08x}", rt::random_u64() as u32)
}

/// An instance of `name` on `port`, TTL-checked every `ttl`.
#[must_use]
pub fn instance(name: &str, port: u16, ttl: Duration) -> ServiceInfo {
    ServiceInfo {
        id: format!("{name}-{port}"),
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        port,
        tags: vec!["v1".to_owned(), "contract".to_owned()],
        metadata: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
        check: HealthCheck::ttl(ttl),
    }
}

/// Runs every rule against `registry`.
pub async fn run_all(registry: Arc<dyn Registry>, opts: Options) {
    registry
        .health()
        .await
        .expect("health: a reachable registry reports healthy");
    register_discover_deregister(&*registry, &opts).await;
    refuses_invalid(&*registry).await;
    heartbeat_of_unknown_is_not_found(&*registry).await;
    watch_blocks_until_change(registry.clone(), &opts).await;
    ttl_expiry_and_recovery(&*registry, &opts).await;
    if let Some(set_status) = &opts.set_status {
        warning_instances_are_discovered(registry.clone(), set_status).await;
    }
}

/// An instance in warning is handed out (degraded is still usable: Consul's
/// meaning of warning, e.g. an HTTP check answering 429), by discovery and
/// by watches alike; a critical one is not.
pub async fn warning_instances_are_discovered(registry: Arc<dyn Registry>, set_status: &SetStatus) {
    let name = unique_name("contract-warn");
    // A long TTL: the states set below must not expire during the case.
    let ttl = Duration::from_secs(30);
    let (a, b) = (instance(&name, 7007, ttl), instance(&name, 7008, ttl));
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");
    let before = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert_eq!(before.instances.len(), 2);

    set_status(a.id.clone(), HealthStatus::Warning).await;
    let mut found = registry.discover(&name).await.expect("discover");
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        found,
        vec![a.clone(), b.clone()],
        "an instance in warning is discovered, fields intact"
    );
    let watched = registry
        .watch(&name, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert_eq!(watched.instances.len(), 2, "and watched");

    let (set, b_id) = (set_status.clone(), b.id.clone());
    let failer = rt::spawn(async move {
        rt::sleep(Duration::from_millis(200)).await;
        set(b_id, HealthStatus::Critical).await;
    });
    let started = rt::now();
    let mut index = watched.index;
    loop {
        let r = registry
            .watch(&name, index, Duration::from_secs(5))
            .await
            .expect("blocking watch");
        if r.instances == vec![a.clone()] {
            break;
        }
        index = r.index;
        assert!(
            rt::now() - started < Duration::from_secs(5),
            "a critical instance leaves the watched set"
        );
    }
    failer.await.expect("failer");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()],
        "a critical instance is not discovered; the warning one still is"
    );
    for id in [&a.id, &b.id] {
        registry.deregister(id).await.expect("cleanup");
    }
}

/// Registered instances are discoverable with every field intact, replaced
/// by id, isolated by name, and gone at once after deregistration.
pub async fn register_discover_deregister(registry: &dyn Registry, opts: &Options) {
    let name = unique_name("contract-reg");
    let a = instance(&name, 7001, opts.ttl_interval);
    let b = instance(&name, 7002, opts.ttl_interval);
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");
    let mut found = registry.discover(&name).await.expect("discover");
    found.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        found,
        vec![a.clone(), b.clone()],
        "discover returns both instances, fields intact"
    );
    assert!(
        registry
            .discover(&unique_name("contract-other"))
            .await
            .expect("discover other")
            .is_empty(),
        "another name sees nothing"
    );

    let mut a2 = a.clone();
    a2.tags.push("replaced".to_owned());
    registry.register(&a2).await.expect("re-register a");
    let found = registry.discover(&name).await.expect("discover");
    assert_eq!(found.len(), 2, "registering an id again replaces it");
    assert!(found.contains(&a2), "the replacement is what is served");

    registry.deregister(&a.id).await.expect("deregister a");
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![b.clone()],
        "deregistration is immediate"
    );
    registry
        .deregister(&a.id)
        .await
        .expect("deregistering an unknown id is not an error");
    registry.deregister(&b.id).await.expect("deregister b");
    assert!(registry.discover(&name).await.expect("discover").is_empty());
}

/// Malformed registrations are refused with [`RegistryError::Invalid`].
pub async fn refuses_invalid(registry: &dyn Registry) {
    let name = unique_name("contract-bad");
    let good = instance(&name, 7003, Duration::from_secs(1));
    let cases: Vec<(&str, ServiceInfo)> = vec![
        (
            "empty id",
            ServiceInfo {
                id: String::new(),
                ..good.clone()
            },
        ),
        (
            "id with a slash",
            ServiceInfo {
                id: "a/b".into(),
                ..good.clone()
            },
        ),
        (
            "id too long",
            ServiceInfo {
                id: "x".repeat(200),
                ..good.clone()
            },
        ),
        (
            "port 0",
            ServiceInfo {
                port: 0,
                ..good.clone()
            },
        ),
        (
            "empty address",
            ServiceInfo {
                address: String::new(),
                ..good.clone()
            },
        ),
    ];
    for (what, info) in cases {
        let err = registry.register(&info).await.expect_err(what);
        assert!(matches!(err, RegistryError::Invalid(_)), "{what}: {err}");
    }
    assert!(
        registry.discover(&name).await.expect("discover").is_empty(),
        "nothing invalid was stored"
    );
}

/// A heartbeat for an id the registry does not know says so (the signal to
/// register again).
pub async fn heartbeat_of_unknown_is_not_found(registry: &dyn Registry) {
    let id = unique_name("contract-ghost");
    let err = registry.heartbeat(&id).await.expect_err("unknown id");
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
}

/// A watch at the current index blocks until the set changes, then returns
/// a larger index and the new set; without a change it returns after `wait`.
pub async fn watch_blocks_until_change(registry: Arc<dyn Registry>, opts: &Options) {
    let name = unique_name("contract-watch");
    let a = instance(&name, 7004, opts.ttl_interval);
    registry.register(&a).await.expect("register");
    let first = registry
        .watch(&name, 0, Duration::from_secs(1))
        .await
        .expect("watch at 0");
    assert!(first.index >= 1, "index is at least 1");
    assert_eq!(first.instances, vec![a.clone()]);

    let b = instance(&name, 7005, opts.ttl_interval);
    let (reg, b2) = (registry.clone(), b.clone());
    let adder = rt::spawn(async move {
        rt::sleep(Duration::from_millis(300)).await;
        reg.register(&b2).await.expect("register b");
    });
    let started = rt::now();
    let mut index = first.index;
    let changed = loop {
        let r = registry
            .watch(&name, index, Duration::from_secs(5))
            .await
            .expect("blocking watch");
        assert!(
            r.index >= index,
            "the index never goes backwards for one backend"
        );
        if r.instances.len() == 2 {
            break r;
        }
        index = r.index;
        assert!(
            rt::now() - started < Duration::from_secs(5),
            "the watch saw the change in time"
        );
    };
    assert!(changed.index > first.index, "a change moves the index");
    assert!(
        rt::now() - started >= Duration::from_millis(250),
        "the watch blocked until the change"
    );
    adder.await.expect("adder");

    let quiet = rt::now();
    let r = registry
        .watch(&name, changed.index, Duration::from_millis(500))
        .await
        .expect("quiet watch");
    let waited = rt::now() - quiet;
    assert_eq!(r.instances.len(), 2, "no change, same set");
    assert!(
        waited >= Duration::from_millis(400),
        "a quiet watch waits about `wait` ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(4),
        "and not much longer ({waited:?})"
    );
    for id in [&a.id, &b.id] {
        registry.deregister(id).await.expect("cleanup");
    }
}

/// An instance whose heartbeats stop leaves the healthy set within its TTL
/// expiry (plus the backend's slack); heartbeats (or re-registering after
/// [`RegistryError::NotFound`]) bring it back.
pub async fn ttl_expiry_and_recovery(registry: &dyn Registry, opts: &Options) {
    let name = unique_name("contract-ttl");
    let a = instance(&name, 7006, opts.ttl_interval);
    registry.register(&a).await.expect("register");
    // Keep it alive over more than one TTL by heartbeating.
    for _ in 0..3 {
        rt::sleep(opts.ttl_interval / 2).await;
        registry.heartbeat(&a.id).await.expect("heartbeat");
    }
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()],
        "heartbeats keep it passing"
    );

    let stopped = rt::now();
    let bound = a.check.ttl_expiry() + opts.expiry_slack;
    loop {
        if registry.discover(&name).await.expect("discover").is_empty() {
            break;
        }
        assert!(
            rt::now() - stopped <= bound + opts.ttl_interval,
            "expired within {bound:?}"
        );
        rt::sleep(Duration::from_millis(100)).await;
    }
    match registry.heartbeat(&a.id).await {
        Ok(()) => {}
        Err(RegistryError::NotFound(_)) => registry.register(&a).await.expect("register again"),
        Err(e) => panic!("heartbeat after expiry: {e}"),
    }
    assert_eq!(
        registry.discover(&name).await.expect("discover"),
        vec![a.clone()],
        "back after a heartbeat"
    );
    registry.deregister(&a.id).await.expect("cleanup");
}
