//! The client pool: one [`Balanced`] channel per service, fed by a registry
//! watch (instances added, critical or removed ones dropped), with a circuit
//! breaker and an in-flight count per instance, behind the client layers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rt::watch;
use tower::Layer as _;

use super::balanced::{Balanced, Hooks, OutcomeHook, TransitionHook};
use crate::middleware::auth::{Attach, AttachLayer, Keyring};
use crate::middleware::metrics::{Measure, Metrics, MetricsLayer};
use crate::middleware::policy::CallPolicy;
use crate::middleware::retry::{Retrier, RetryHook};
use crate::middleware::timeout::{PropagateDeadline, PropagateDeadlineLayer};
use crate::middleware::trace::{ClientTrace, ClientTraceLayer};
use crate::registry::watcher::{WatchPolicy, Watcher};
use crate::registry::{Registry, RegistryError, ServiceInfo};
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::budget::BudgetConfig;
use crate::resilience::retry::RetryPolicy;
use crate::rt::{self, transport};

/// A channel as handed out: the balanced instances behind the client
/// layers (call metrics, trace context, service token, deadline
/// propagation). No request id layer: the server takes the trace id as the
/// request id, so the id follows the request across hops without a header
/// of its own.
pub type PoolChannel = ClientTrace<Measure<Attach<PropagateDeadline<Balanced>>>>;

/// How long [`ClientPool::channel`] waits for a service's first watch answer.
pub const FIRST_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Getting a channel failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The pool was closed (the node is shutting down).
    #[error("client pool closed")]
    Closed,
    /// No healthy instance of the service is registered.
    #[error("no healthy instance of {0:?}")]
    NoInstance(String),
    /// The registry failed.
    #[error("the service registry is unavailable")]
    Registry(#[from] RegistryError),
}

impl crate::error::Classify for PoolError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Unavailable
    }
}

impl From<PoolError> for tonic::Status {
    /// UNAVAILABLE with the public message; not logged above debug (a
    /// missing cache instance is met on every read and is no error).
    fn from(e: PoolError) -> Self {
        if let PoolError::Registry(cause) = &e {
            tracing::debug!(error = %cause, "no channel: the registry failed");
        }
        tonic::Status::new(crate::error::Classify::kind(&e).code(), e.to_string())
    }
}

/// Settings of a pool.
#[derive(Clone)]
pub struct PoolConfig {
    /// Signs this node's service tokens.
    pub keys: Keyring,
    /// The calling service named in the tokens.
    pub identity: String,
    /// Breaker of each instance.
    pub breaker: BreakerConfig,
    /// Pace of the registry watches.
    pub watch: WatchPolicy,
    /// Called on every breaker transition (instance id, transition).
    pub on_transition: Option<TransitionHook>,
    /// Called on every admitted call's outcome (instance id, outcome).
    pub on_outcome: Option<OutcomeHook>,
    /// Retries of idempotent calls made through [`ClientPool::retrier`].
    pub retry: RetryPolicy,
    /// The budget those retries draw from, shared by the whole pool.
    pub budget: BudgetConfig,
    /// Called on every retry decision.
    pub on_retry: Option<RetryHook>,
    /// Where breaker transitions (per called service and instance),
    /// retries and budget refusals (per called service) are counted; the
    /// kernel sets its node's.
    pub metrics: Option<Metrics>,
    /// This node's service identity under mutual TLS: its channels present
    /// it and its servers require one of the cluster CA (`None`:
    /// plaintext, with service tokens).
    pub tls: Option<transport::Mtls>,
    /// What this node's servers allow each caller to call (`None`: every
    /// verified caller, everything).
    pub policy: Option<Arc<CallPolicy>>,
}

impl PoolConfig {
    /// Defaults, calling as `identity` with tokens signed by `keys`.
    #[must_use]
    pub fn new(keys: Keyring, identity: &str) -> Self {
        Self {
            keys,
            identity: identity.to_owned(),
            breaker: BreakerConfig::default(),
            watch: WatchPolicy::default(),
            on_transition: None,
            on_outcome: None,
            retry: RetryPolicy::default(),
            budget: BudgetConfig::default(),
            on_retry: None,
            metrics: None,
            tls: None,
            policy: None,
        }
    }
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("breaker", &self.breaker)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

struct Entry {
    balanced: Balanced,
    discovered: watch::Receiver<bool>,
    task: rt::JoinHandle<()>,
}

struct Inner {
    registry: Arc<dyn Registry>,
    cfg: PoolConfig,
    attach: AttachLayer,
    services: Mutex<HashMap<String, Entry>>,
    closed: AtomicBool,
    retrier: Retrier,
    /// Where the channels count their calls (`cfg.metrics`, or a registry
    /// of the pool's own that nothing serves).
    metrics: Metrics,
}

/// Channels to other services; cheap to clone.
#[derive(Clone)]
pub struct ClientPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool").finish_non_exhaustive()
    }
}

fn socket_addr(info: &ServiceInfo) -> Option<SocketAddr> {
    match info.address.parse() {
        Ok(ip) => Some(SocketAddr::new(ip, info.port)),
        Err(_) => {
            tracing::warn!(id = %info.id, address = %info.address, "instance address is not an IP; skipped");
            None
        }
    }
}

/// Keeps `balanced` equal to the registry's healthy set of `name`.
async fn follow(
    registry: Arc<dyn Registry>,
    name: String,
    cfg: PoolConfig,
    balanced: Balanced,
    found: watch::Sender<bool>,
) {
    let watcher = Watcher::spawn(registry, &name, cfg.watch);
    let mut instances = watcher.instances();
    // The watcher's first answer replaces the empty initial value.
    while instances.changed().await.is_ok() {
        let set = instances.borrow_and_update().clone();
        balanced.update(
            set.iter()
                .filter_map(|i| Some((i.id.clone(), socket_addr(i)?))),
            cfg.breaker,
        );
        found.send_replace(true);
    }
}

/// The transition hook of `service`'s breakers: the configured one, and
/// the count in `metrics` under `service` and the instance.
fn transition_hook(
    service: &str,
    user: Option<TransitionHook>,
    metrics: Option<Metrics>,
) -> Option<TransitionHook> {
    let Some(metrics) = metrics else {
        return user;
    };
    let service: Arc<str> = service.into();
    Some(Arc::new(move |endpoint: &str, t| {
        metrics.breaker(&service, endpoint, t);
        if let Some(hook) = &user {
            hook(endpoint, t);
        }
    }))
}

impl ClientPool {
    /// A pool with `cfg` that finds instances in `registry`.
    #[must_use]
    pub fn new(registry: Arc<dyn Registry>, cfg: PoolConfig) -> Self {
        // Under mutual TLS the certificate is the identity: no token.
        let attach = AttachLayer::new(&cfg.keys, &cfg.identity).enabled(cfg.tls.is_none());
        let mut retrier = Retrier::new(cfg.retry.clone(), cfg.budget);
        if let Some(hook) = &cfg.on_retry {
            retrier = retrier.with_hook(hook.clone());
        }
        if let Some(metrics) = &cfg.metrics {
            retrier = retrier.with_metrics(metrics.clone());
        }
        let inner = Inner {
            metrics: cfg.metrics.clone().unwrap_or_default(),
            retrier,
            registry,
            cfg,
            attach,
            services: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// This node's service identity under mutual TLS, if on.
    #[must_use]
    pub fn tls(&self) -> Option<&transport::Mtls> {
        self.inner.cfg.tls.as_ref()
    }

    /// This node's call policy, if any.
    #[must_use]
    pub fn policy(&self) -> Option<Arc<CallPolicy>> {
        self.inner.cfg.policy.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The balanced channel of `service` (a cached one after the first call).
    /// The first call waits up to [`FIRST_DISCOVERY_TIMEOUT`] for discovery.
    ///
    /// # Errors
    /// Closed pool, or no healthy instance known.
    pub async fn channel(&self, service: &str) -> Result<PoolChannel, PoolError> {
        let balanced = self.balanced(service).await?;
        Ok(self.layered(balanced))
    }

    /// A channel to the instance of `service` that owns `key` by rendezvous
    /// hashing over its healthy instances (see [`super::rendezvous`]), so
    /// every caller sends a key to the same instance. The owner is chosen
    /// per call, as the registry reports instances coming and going; the
    /// breaker and in-flight count of that instance apply.
    ///
    /// # Errors
    /// As [`ClientPool::channel`].
    pub async fn channel_for_key(
        &self,
        service: &str,
        key: &[u8],
    ) -> Result<PoolChannel, PoolError> {
        let balanced = self.balanced(service).await?;
        Ok(self.layered(balanced.for_key(key)))
    }

    /// The instance of `service` that owns `key` now (for status pages and
    /// tests), if the pool follows `service` and knows an instance.
    #[must_use]
    pub fn owner(&self, service: &str, key: &[u8]) -> Option<Arc<super::balanced::Endpoint>> {
        self.lock().get(service)?.balanced.owner(key)
    }

    fn layered(&self, balanced: Balanced) -> PoolChannel {
        let layered = PropagateDeadlineLayer.layer(balanced);
        // The trace layer outermost, so the metrics layer sees the
        // `traceparent` of the call (its client span's id).
        ClientTraceLayer.layer(
            MetricsLayer::client(self.inner.metrics.clone())
                .layer(self.inner.attach.layer(layered)),
        )
    }

    /// The instances of `service`, followed from the registry from the
    /// first call on.
    async fn balanced(&self, service: &str) -> Result<Balanced, PoolError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let (balanced, mut discovered) = {
            let mut services = self.lock();
            let entry = services.entry(service.to_owned()).or_insert_with(|| {
                let hooks = Hooks {
                    on_transition: transition_hook(
                        service,
                        self.inner.cfg.on_transition.clone(),
                        self.inner.cfg.metrics.clone(),
                    ),
                    on_outcome: self.inner.cfg.on_outcome.clone(),
                };
                let balanced = Balanced::new(service, hooks).with_tls(self.inner.cfg.tls.clone());
                let (tx, rx) = watch::channel(false);
                let task = rt::spawn(follow(
                    self.inner.registry.clone(),
                    service.to_owned(),
                    self.inner.cfg.clone(),
                    balanced.clone(),
                    tx,
                ));
                Entry {
                    balanced,
                    discovered: rx,
                    task,
                }
            });
            (entry.balanced.clone(), entry.discovered.clone())
        };
        let _ = rt::timeout(FIRST_DISCOVERY_TIMEOUT, discovered.wait_for(|found| *found)).await;
        if balanced.endpoints().is_empty() {
            return Err(PoolError::NoInstance(service.to_owned()));
        }
        Ok(balanced)
    }

    /// Retries for idempotent calls, with the pool's policy and one budget
    /// shared by every call of this pool (so an outage cannot multiply the
    /// load: at most the budget's ratio of extra calls).
    #[must_use]
    pub fn retrier(&self) -> &Retrier {
        &self.inner.retrier
    }

    /// [`ClientPool::retrier`], its retries and budget refusals counted
    /// under `target` (the service the calls go to).
    #[must_use]
    pub fn retrier_for(&self, target: &'static str) -> Retrier {
        self.inner.retrier.to(target)
    }

    /// The instances the pool currently holds for `service`, with their
    /// breaker states (for status pages and tests).
    #[must_use]
    pub fn endpoints(&self, service: &str) -> Vec<Arc<super::balanced::Endpoint>> {
        self.lock()
            .get(service)
            .map(|e| e.balanced.endpoints())
            .unwrap_or_default()
    }

    /// Closes the pool: watches stop, cached channels are dropped, later
    /// calls fail.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for (_, entry) in self.lock().drain() {
            entry.task.abort();
        }
    }
}
