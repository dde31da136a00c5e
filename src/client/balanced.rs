//! The pool's per-service channel: every call picks an instance by P2C among
//! those whose circuit breaker admits it (or, on a keyed channel, the key's
//! owner by rendezvous hashing), counts itself in flight there, and reports
//! its outcome to that breaker. A call no breaker admits fails with
//! UNAVAILABLE without touching the network. A call's `grpc-timeout` is
//! enforced here, so a silent instance counts as failing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use rand::Rng as _;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::Service;

use super::balance::p2c;
use super::rendezvous;
use crate::grpc_timeout;
use crate::resilience::breaker::{Admit, Breaker, BreakerConfig, Permit, State, Transition};
use crate::rt::{self, transport};

/// A call's candidate instances (or their loads): inline up to 4.
type Candidates<T> = smallvec::SmallVec<[T; 4]>;

/// One instance of a service, as the pool holds it.
#[derive(Debug)]
pub struct Endpoint {
    /// Its registry id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    channel: transport::Channel,
    /// Copies of `channel` between calls: a copy keeps what its first call
    /// set up (the sender into the channel's buffer), so a call takes one
    /// rather than cloning the channel anew.
    spares: Mutex<Vec<transport::Channel>>,
    breaker: Mutex<Breaker>,
    in_flight: AtomicU32,
}

/// Most copies of a channel kept between calls. A call gives its copy back
/// as soon as the channel has taken the request, so copies pile up only
/// while calls wait at once for room in the channel's buffer.
const MAX_SPARE_CHANNELS: usize = 256;

impl Endpoint {
    /// A new endpoint with a closed breaker.
    #[must_use]
    pub fn new(id: String, addr: SocketAddr, breaker: BreakerConfig) -> Self {
        Self::with_channel(id, addr, transport::channel(addr), breaker)
    }

    /// A new endpoint with a closed breaker, calling over `channel`.
    #[must_use]
    pub fn with_channel(
        id: String,
        addr: SocketAddr,
        channel: transport::Channel,
        breaker: BreakerConfig,
    ) -> Self {
        Self {
            id,
            addr,
            channel,
            spares: Mutex::default(),
            breaker: Mutex::new(Breaker::new(breaker)),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Its breaker's state.
    #[must_use]
    pub fn breaker_state(&self) -> State {
        self.lock().state()
    }

    /// Its breaker's state and failures in a row, read together.
    #[must_use]
    pub fn breaker_view(&self) -> (State, u32) {
        let b = self.lock();
        (b.state(), b.consecutive_failures())
    }

    /// Calls in flight.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A copy of the channel for one call: a spare one if there is one.
    fn take_channel(&self) -> transport::Channel {
        let spare = self.spares().pop();
        spare.unwrap_or_else(|| self.channel.clone())
    }

    /// Keeps a copy whose call has started (it holds no reserved slot).
    fn give_back(&self, channel: transport::Channel) {
        let mut spares = self.spares();
        if spares.len() < MAX_SPARE_CHANNELS {
            spares.push(channel);
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<transport::Channel>> {
        self.spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Observes breaker transitions (metrics, the simulation's checkers).
pub type TransitionHook = Arc<dyn Fn(&str, Transition) + Send + Sync>;

/// The outcome of one admitted call, as the breaker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The call was a probe of the current half-open period.
    pub probe: bool,
    /// The breaker counted it a success.
    pub success: bool,
    /// The transition the outcome caused, if any.
    pub transition: Option<Transition>,
}

/// Observes the outcome of every admitted call (the simulation's breaker
/// checker).
pub type OutcomeHook = Arc<dyn Fn(&str, Outcome) + Send + Sync>;

/// What a [`Balanced`] reports to.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Every breaker transition.
    pub on_transition: Option<TransitionHook>,
    /// Every call's outcome.
    pub on_outcome: Option<OutcomeHook>,
}

/// How a call chooses its instance.
#[derive(Debug, Clone)]
enum Route {
    /// Power of two choices among the instances whose breaker admits it.
    P2c,
    /// The key's owner by rendezvous hashing over every instance the
    /// registry reports healthy, whatever this caller's breakers say: every
    /// caller must agree on the owner, and breakers are per caller.
    Owner(Arc<[u8]>),
}

/// The instances of one service, replaced as the registry watch reports.
/// Cloned for every call: one reference count, and the route.
#[derive(Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
    route: Route,
}

/// What every copy of a [`Balanced`] (and every `for_key` of it) shares.
#[derive(Clone)]
struct Shared {
    service: Arc<str>,
    endpoints: Arc<Mutex<BTreeMap<String, Arc<Endpoint>>>>,
    hooks: Hooks,
    /// Mutual TLS to the instances, when on.
    tls: Option<transport::Mtls>,
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.shared.service)
            .finish_non_exhaustive()
    }
}

/// Whether a status says the instance (rather than the request) failed.
#[must_use]
pub fn is_instance_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown
    )
}

impl Balanced {
    /// An empty set for `service`.
    #[must_use]
    pub fn new(service: &str, hooks: Hooks) -> Self {
        Self {
            shared: Arc::new(Shared {
                service: service.into(),
                endpoints: Arc::default(),
                hooks,
                tls: None,
            }),
            route: Route::P2c,
        }
    }

    /// The same, calling its instances over mutual TLS with `tls` (each
    /// must present a certificate naming this set's service).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<transport::Mtls>) -> Self {
        Arc::make_mut(&mut self.shared).tls = tls;
        self
    }

    /// The same instances, but every call goes to the owner of `key` (see
    /// [`rendezvous`]). When the owner's breaker is open the call fails at
    /// once rather than going elsewhere: a second copy of the key on another
    /// instance would escape invalidations sent to the owner.
    #[must_use]
    pub fn for_key(&self, key: &[u8]) -> Self {
        Self {
            route: Route::Owner(key.into()),
            ..self.clone()
        }
    }

    /// The instance that owns `key` now, if there is any instance.
    #[must_use]
    pub fn owner(&self, key: &[u8]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints();
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let i = rendezvous::owner(key, &ids)?;
        Some(endpoints[i].clone())
    }

    /// The endpoints, by instance id.
    #[must_use]
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Endpoint>>> {
        self.shared
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the set: keeps endpoints (and their breakers) still listed at
    /// the same address, adds new ones, drops the rest.
    pub fn update(
        &self,
        instances: impl IntoIterator<Item = (String, SocketAddr)>,
        breaker: BreakerConfig,
    ) {
        let mut current = self.lock();
        let mut next = BTreeMap::new();
        for (id, addr) in instances {
            let endpoint = match current.remove(&id) {
                Some(e) if e.addr == addr => e,
                _ => Arc::new(Endpoint::with_channel(
                    id.clone(),
                    addr,
                    transport::channel_to(addr, self.shared.tls.as_ref(), &self.shared.service),
                    breaker,
                )),
            };
            next.insert(id, endpoint);
        }
        *current = next;
    }

    fn notify(&self, endpoint: &str, t: Option<Transition>) {
        if let (Some(hook), Some(t)) = (&self.shared.hooks.on_transition, t) {
            hook(endpoint, t);
        }
    }

    /// Picks an instance as the route says and takes a breaker permit on it.
    fn pick(&self) -> Result<(Arc<Endpoint>, Permit), Status> {
        // Copied out of the lock (no breaker is taken under it), on the
        // stack for up to a few instances: this runs on every call.
        let endpoints: Candidates<Arc<Endpoint>> = self.lock().values().cloned().collect();
        if endpoints.is_empty() {
            return Err(Status::unavailable(format!(
                "no healthy instance of {}",
                self.shared.service
            )));
        }
        match &self.route {
            Route::P2c => self.pick_p2c(endpoints),
            Route::Owner(key) => self.pick_owner(&endpoints, key),
        }
    }

    fn pick_owner(
        &self,
        endpoints: &[Arc<Endpoint>],
        key: &[u8],
    ) -> Result<(Arc<Endpoint>, Permit), Status> {
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let owner = &endpoints[rendezvous::owner(key, &ids).expect("endpoints are not empty")];
        let (admit, t) = owner.lock().try_acquire(rt::now());
        self.notify(&owner.id, t);
        match admit {
            Admit::Yes(permit) => Ok((owner.clone(), permit)),
            Admit::No { retry_after } => Err(Status::unavailable(format!(
                "{} owns the key and is open (circuit breaker); retry in {retry_after:?}",
                owner.id
            ))),
        }
    }

    fn pick_p2c(
        &self,
        endpoints: Candidates<Arc<Endpoint>>,
    ) -> Result<(Arc<Endpoint>, Permit), Status> {
        let now = rt::now();
        let mut admitted = Candidates::new();
        let mut retry_after = None;
        for endpoint in endpoints {
            let (admit, t) = endpoint.lock().try_acquire(now);
            self.notify(&endpoint.id, t);
            match admit {
                Admit::Yes(permit) => admitted.push((endpoint, permit)),
                Admit::No { retry_after: r } => {
                    retry_after = Some(retry_after.map_or(r, |x: std::time::Duration| x.min(r)))
                }
            }
        }
        let loads: Candidates<u32> = admitted.iter().map(|(e, _)| e.in_flight()).collect();
        let Some(chosen) = p2c(&loads, &mut rt::rng()) else {
            let wait = retry_after.unwrap_or_default();
            return Err(Status::unavailable(format!(
                "every instance of {} is open (circuit breaker); retry in {wait:?}",
                self.shared.service
            )));
        };
        // Permits not used go back untouched, so no half-open probe slot leaks.
        let picked = admitted.swap_remove(chosen);
        for (endpoint, permit) in admitted {
            endpoint.lock().release(permit);
        }
        Ok(picked)
    }
}

impl Service<Request<Body>> for Balanced {
    type Response = Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<Body>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (endpoint, permit) = this.pick()?;
            let call = Admitted::start(endpoint.clone(), permit);
            let limit = grpc_timeout::from_headers(req.headers());
            let mut channel = endpoint.take_channel();
            let exchange = async {
                let failed = |e| transport_status(&this.shared.service, &endpoint.id, e);
                match futures::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                    Ok(()) => {
                        let response = channel.call(req);
                        endpoint.give_back(channel);
                        response.await.map_err(failed)
                    }
                    Err(e) => Err(failed(e)),
                }
            };
            // Enforced here rather than left to the transport: tonic's own
            // timer ends the call as CANCELLED, which no breaker counts.
            let result = match limit {
                Some(limit) => {
                    let elapsed = || {
                        Status::deadline_exceeded(format!(
                            "deadline of {limit:?} elapsed waiting for {}",
                            endpoint.id
                        ))
                    };
                    let started = rt::now();
                    match rt::timeout(limit, exchange).await {
                        // tonic's timer may fire in the same tick as ours.
                        Ok(Err(s))
                            if s.code() == Code::Cancelled && rt::now() - started >= limit =>
                        {
                            Err(elapsed())
                        }
                        Ok(result) => result,
                        Err(rt::Elapsed) => Err(elapsed()),
                    }
                }
                None => exchange.await,
            };
            let failed = match &result {
                Err(status) => is_instance_failure(status.code()),
                // Trailers-only responses carry their status in the headers.
                Ok(res) => crate::error::grpc_code(res.headers()).is_some_and(is_instance_failure),
            };
            let (probe, t) = call.finish(!failed);
            if let Some(hook) = &this.shared.hooks.on_outcome {
                let outcome = Outcome {
                    probe,
                    success: !failed,
                    transition: t,
                };
                hook(&endpoint.id, outcome);
            }
            this.notify(&endpoint.id, t);
            result
        })
    }
}

/// A call admitted on an endpoint, counted in flight there until it ends.
/// One dropped before its outcome (its caller gave up, e.g. a timeout
/// around it) gives its permit back untouched: neither the count nor a
/// half-open probe slot leaks.
struct Admitted {
    endpoint: Arc<Endpoint>,
    permit: Option<Permit>,
}

impl Admitted {
    fn start(endpoint: Arc<Endpoint>, permit: Permit) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            endpoint,
            permit: Some(permit),
        }
    }

    /// Reports the outcome to the endpoint's breaker: whether the call was
    /// a probe of the current half-open period, and the transition.
    fn finish(mut self, success: bool) -> (bool, Option<Transition>) {
        let permit = self.permit.take().expect("an admitted call finishes once");
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut breaker = self.endpoint.lock();
        let probe = breaker.is_current_probe(&permit);
        let t = breaker.on_result(permit, success, rt::now(), rt::rng().gen_range(0.0..1.0));
        (probe, t)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.endpoint.lock().release(permit);
        }
    }
}

/// The status of a call the transport failed (no connection, a reset
/// stream): its code as tonic maps it, a message that names the service;
/// the transport's own words ("tcp connect error: Connection refused") go
/// to the log, not to whoever reads the status.
fn transport_status(
    service: &str,
    endpoint: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Status {
    let status = Status::from_error(e.into());
    tracing::debug!(
        service,
        endpoint,
        code = ?status.code(),
        error = status.message(),
        "call failed in the transport"
    );
    Status::new(
        status.code(),
        format!("{service}: no answer from {endpoint}"),
    )
}

#[cfg(all(test, not(madsim)))]
mod tests;
