//! Unary calls through the client pool and the full middleware stack (both
//! sides) against a raw tonic channel to a bare server, measured in the same
//! run, rounds interleaved: throughput and p50/p99 at concurrency 1 and 64,
//! printed as ratios. Two more paths split the cost: the pool's client side
//! alone (pool -> bare server) and the server's layers alone (raw tonic with
//! a service token -> full server).
//!
//! `cargo bench --bench pool_overhead` (`-- --quick`: one short round).
//! Server and client each run on their own single-threaded runtime (their
//! own thread); for steadier figures pin the process to two cores
//! (`taskset -c 0,1`). `-- --profile PATH CALLS` makes CALLS calls on one
//! path (0 baseline, 1 client side, 2 server side, 3 both) and measures
//! nothing: instructions per call, under callgrind, are the difference of
//! two paths' totals over CALLS.
//!
//! Then the same over mutual TLS (`rt/mtls.rs`, certificates made by
//! `streamgate certs` in a temporary directory): raw tonic over mTLS to a
//! bare server over mTLS (the baseline a user would build on) against the
//! pool over mTLS to the full server over mTLS under the shipped call
//! policy, and the peer stack: the same server features from stock parts
//! (`peer`), and last the peer stack with stock parts for the features it
//! lacked against the pool (client-side balancing, a client latency
//! histogram, the trace context sent and continued, a request id:
//! `peer_both_channel`). `--profile 4|5|6|7 CALLS` for callgrind; `--only
//! PATH CONCURRENCY SECONDS` runs one path alone, for `perf stat`.
//!
//! Last, the full stack with span export (OTLP/gRPC to a receiver in the
//! same process, `streamgate_testkit::otlp`) off, at a 1 % sampling ratio
//! and at 100 %, rounds interleaved, as ratios against export off
//! (`-- --no-export` skips it).
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
mod support;

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

    use streamgate::blob::memory::MemoryBlobStore;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::client::{ClientPool, PoolConfig};
    use streamgate::middleware::auth::Keyring;
    use streamgate::proto::CacheGetRequest;
    use streamgate::proto::cache_service_client::CacheServiceClient;
    use streamgate::proto::cache_service_server::CacheServiceServer;
    use streamgate::registry::Registry as _;
    use streamgate::registry::memory::MemoryRegistry;
    use streamgate::rt::{self, transport};
    use streamgate::services::cache::CacheServer;
    use streamgate::services::{Common, ServiceKind};
    use tonic::service::Routes;

    use crate::support::{self, Ratio, Rounds};

    const ROUND: Duration = Duration::from_secs(2);
    const ROUNDS: usize = 3;

    struct Figures {
        per_sec: f64,
        p50: Duration,
        p99: Duration,
    }

    /// Runs `concurrency` loops of calls for `round`; `call` makes one call.
    async fn measure<C, F>(
        round: Duration,
        concurrency: usize,
        make: impl Fn() -> C,
        call: F,
    ) -> Figures
    where
        C: Send + 'static,
        F: Fn(C) -> futures::future::BoxFuture<'static, C> + Clone + Send + 'static,
    {
        let end = rt::now() + round;
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
            per_sec: all.len() as f64 / round.as_secs_f64(),
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

    /// Where the servers listen.
    struct Servers {
        bare: SocketAddr,
        full: SocketAddr,
        bare_tls: SocketAddr,
        peer_tls: SocketAddr,
        peer_both_tls: SocketAddr,
    }

    /// The peer stack: the same features as StreamGate's server stack, from
    /// the parts a user would pick (the issue's comparison): tonic over the
    /// same mutual TLS, tower-http's `TraceLayer`, a latency histogram per
    /// method (prometheus-client, as `peer::Timed`), tower's `Timeout`, and
    /// a tonic interceptor that checks the caller's certificate against the
    /// call policy and a rate limiter per caller (governor).
    mod peer {
        use std::future::Future;
        use std::pin::Pin;
        use std::sync::Arc;
        use std::task::{Context, Poll};

        use prometheus_client::encoding::EncodeLabelSet;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        use streamgate::middleware::policy::CallPolicy;
        use streamgate::rt::{self, transport};
        use tower::Service;

        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        pub struct Method {
            path: String,
        }

        type Latency = Family<Method, Histogram, fn() -> Histogram>;

        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        }

        /// Times each call into a histogram by method.
        #[derive(Clone)]
        pub struct Timed<S> {
            inner: S,
            latency: Latency,
        }

        pub fn timed<S>(inner: S, latency: &Latency) -> Timed<S> {
            Timed {
                inner,
                latency: latency.clone(),
            }
        }

        pub fn latency() -> Latency {
            Family::new_with_constructor(histogram)
        }

        impl<S, B> Service<http::Request<B>> for Timed<S>
        where
            S: Service<http::Request<B>>,
            S::Future: Send + 'static,
        {
            type Response = S::Response;
            type Error = S::Error;
            type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, req: http::Request<B>) -> Self::Future {
                let histogram = self.latency.get_or_create(&Method {
                    path: req.uri().path().to_owned(),
                });
                let histogram = histogram.clone();
                let started = rt::now();
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let out = fut.await;
                    histogram.observe((rt::now() - started).as_secs_f64());
                    out
                })
            }
        }

        /// W3C trace context the way a user of OpenTelemetry carries it:
        /// the SDK's `TraceContextPropagator` over the request's headers.
        struct Headers<'a>(&'a mut http::HeaderMap);

        impl opentelemetry::propagation::Injector for Headers<'_> {
            fn set(&mut self, key: &str, value: String) {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(key.as_bytes()),
                    http::HeaderValue::try_from(value),
                ) {
                    self.0.insert(name, value);
                }
            }
        }

        impl opentelemetry::propagation::Extractor for Headers<'_> {
            fn get(&self, key: &str) -> Option<&str> {
                self.0.get(key).and_then(|v| v.to_str().ok())
            }

            fn keys(&self) -> Vec<&str> {
                self.0.keys().map(http::HeaderName::as_str).collect()
            }
        }

        /// A new span's context under `parent` (a new trace without one).
        fn child(parent: &opentelemetry::Context) -> opentelemetry::Context {
            use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceFlags, TraceState};
            use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
            let ids = RandomIdGenerator::default();
            let span = parent.span();
            let parent_span = span.span_context();
            let trace_id = if parent_span.is_valid() {
                parent_span.trace_id()
            } else {
                ids.new_trace_id()
            };
            parent.with_remote_span_context(SpanContext::new(
                trace_id,
                ids.new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ))
        }

        /// Client side: sends a child of the task's current context.
        pub fn inject<B>(mut req: http::Request<B>) -> http::Request<B> {
            use opentelemetry::propagation::TextMapPropagator as _;
            let context = child(&opentelemetry::Context::current());
            opentelemetry_sdk::propagation::TraceContextPropagator::new()
                .inject_context(&context, &mut Headers(req.headers_mut()));
            req
        }

        /// Server side: continues the caller's trace (or starts one) and
        /// makes the call's context current for the handler.
        #[derive(Clone)]
        pub struct Extract<S> {
            pub inner: S,
        }

        impl<S, B> Service<http::Request<B>> for Extract<S>
        where
            S: Service<http::Request<B>>,
        {
            type Response = S::Response;
            type Error = S::Error;
            type Future = opentelemetry::context::WithContext<S::Future>;

            fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
                self.inner.poll_ready(cx)
            }

            fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
                use opentelemetry::context::FutureExt as _;
                use opentelemetry::propagation::TextMapPropagator as _;
                let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
                    .extract(&Headers(req.headers_mut()));
                self.inner.call(req).with_context(child(&parent))
            }
        }

        type Limiter = governor::RateLimiter<
            String,
            governor::state::keyed::HashMapStateStore<String>,
            governor::clock::DefaultClock,
        >;

        /// The interceptor: the caller's certificate names a service the
        /// policy allows to call the method, and the caller is within its
        /// rate.
        #[derive(Clone)]
        pub struct Check {
            policy: Arc<CallPolicy>,
            limiter: Arc<Limiter>,
        }

        impl Check {
            pub fn new(policy: Arc<CallPolicy>) -> Self {
                let quota = governor::Quota::per_second(std::num::NonZeroU32::MAX);
                Self {
                    policy,
                    limiter: Arc::new(governor::RateLimiter::hashmap(quota)),
                }
            }
        }

        impl tonic::service::Interceptor for Check {
            fn call(
                &mut self,
                req: tonic::Request<()>,
            ) -> Result<tonic::Request<()>, tonic::Status> {
                let peer = req
                    .extensions()
                    .get::<transport::MtlsPeer>()
                    .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
                // The interceptor does not see the path: the bench's one
                // method stands for it, as a user's per-service
                // interceptor would name its own.
                if !self
                    .policy
                    .allows(&peer.service, "/streamgate.v1.CacheService/Get")
                {
                    return Err(tonic::Status::permission_denied("not allowed"));
                }
                self.limiter
                    .check_key(&peer.service.to_string())
                    .map_err(|_| tonic::Status::resource_exhausted("rate"))?;
                Ok(req)
            }
        }
    }

    /// The cache's and the caller's (api-gateway's) identities from
    /// certificates made in `dir`.
    fn identities(dir: &std::path::Path) -> anyhow::Result<(transport::Mtls, transport::Mtls)> {
        use streamgate::cli::certs;
        certs::init(dir, 1).map_err(anyhow::Error::msg)?;
        certs::issue(dir, 1, &[ServiceKind::Cache, ServiceKind::ApiGateway])
            .map_err(anyhow::Error::msg)?;
        let load = |service: &str| {
            transport::ServiceTls {
                ca: dir.join(certs::CA_CERT),
                cert: dir.join(format!("{service}.pem")),
                key: dir.join(format!("{service}-key.pem")),
            }
            .load()
            .map_err(anyhow::Error::msg)
        };
        Ok((load("cache")?, load("api-gateway")?))
    }

    /// Starts the servers on a runtime of their own: bare and full in
    /// plaintext, and over mutual TLS with `cache_tls` a bare one and a full
    /// one (registered in `tls_registry`, under the shipped call policy).
    fn start_servers(
        keys: Keyring,
        registry: Arc<MemoryRegistry>,
        tls_registry: Arc<MemoryRegistry>,
        cache_tls: transport::Mtls,
    ) -> anyhow::Result<Servers> {
        support::serve_on_thread("server", support::current_thread()?, move || async move {
            // Bare over mutual TLS: the generated server alone.
            let listener = transport::Listener::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let bare_tls = listener.local_addr().expect("addr");
            rt::spawn(transport::serve_mtls(
                listener,
                Routes::new(CacheServiceServer::new(
                    CacheServer::new(Default::default()),
                )),
                tower::layer::util::Identity::new(),
                Some(cache_tls.clone()),
                std::future::pending(),
            ));
            // The peer stack over mutual TLS.
            let listener = transport::Listener::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let peer_tls = listener.local_addr().expect("addr");
            let policy = Arc::new(
                streamgate::middleware::policy::CallPolicy::parse(include_str!(
                    "../config/call-policy.toml"
                ))
                .expect("the shipped policy"),
            );
            let check = peer::Check::new(policy.clone());
            let peer_routes = Routes::new(tonic::service::interceptor::InterceptedService::new(
                CacheServiceServer::new(CacheServer::new(Default::default())),
                check,
            ));
            let latency = peer::latency();
            let peer_stack = tower::ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_grpc())
                .layer(tower::layer::layer_fn(move |s| peer::timed(s, &latency)))
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)));
            rt::spawn(transport::serve_mtls(
                listener,
                peer_routes.clone(),
                peer_stack,
                Some(cache_tls.clone()),
                std::future::pending(),
            ));
            // The peer stack with the parts of the features it lacked: the
            // caller's trace continued (OpenTelemetry's propagator) and a
            // request id (tower-http's, a UUID, echoed).
            let listener = transport::Listener::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let peer_both_tls = listener.local_addr().expect("addr");
            let latency = peer::latency();
            let peer_both_stack = tower::ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_grpc())
                .layer(tower::layer::layer_fn(|inner| peer::Extract { inner }))
                .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
                    tower_http::request_id::MakeRequestUuid,
                ))
                .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
                .layer(tower::layer::layer_fn(move |s| peer::timed(s, &latency)))
                .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)));
            rt::spawn(transport::serve_mtls(
                listener,
                peer_routes,
                peer_both_stack,
                Some(cache_tls.clone()),
                std::future::pending(),
            ));
            // Full over mutual TLS: the service as a cluster runs it.
            let tls_common = Common {
                rate_limit: (u32::MAX, 1e12),
                check_interval: Duration::from_secs(3600),
                ..Common::ephemeral()
            };
            let mut pool = PoolConfig::new(keys.clone(), "cache");
            pool.tls = Some(cache_tls);
            pool.policy = Some(policy);
            let tls_node = streamgate::kernel::Kernel::start_with(
                streamgate::kernel::Seams {
                    bus: Arc::new(MemoryBus::new()),
                    registry: tls_registry,
                    blobs: Arc::new(MemoryBlobStore::new()),
                },
                pool,
                vec![support::plugin(ServiceKind::Cache, tls_common, |_| {})],
            )
            .await
            .expect("the mTLS node starts");
            // Bare: the generated server alone, no layers.
            let listener = transport::Listener::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("bind");
            let bare = listener.local_addr().expect("addr");
            let routes = Routes::new(CacheServiceServer::new(
                CacheServer::new(Default::default()),
            ));
            rt::spawn(transport::serve(
                listener,
                routes,
                tower::layer::util::Identity::new(),
                std::future::pending(),
            ));
            // Full: the service as StreamGate runs it (all server layers).
            let common = Common {
                // Measure the limiter's cost, not its refusals.
                rate_limit: (u32::MAX, 1e12),
                // No heartbeats during the run: a TTL longer than it.
                check_interval: Duration::from_secs(3600),
                ..Common::ephemeral()
            };
            let node = support::start_node(
                registry,
                Arc::new(MemoryBus::new()),
                Arc::new(MemoryBlobStore::new()),
                keys,
                "cache",
                vec![support::plugin(ServiceKind::Cache, common, |_| {})],
            )
            .await;
            let servers = Servers {
                bare,
                full: support::address(&node, ServiceKind::Cache),
                bare_tls,
                peer_tls,
                peer_both_tls,
            };
            (servers, (node, tls_node))
        })
    }

    /// A client making one kind of call: which channel, and whether the
    /// request carries a service token (the full server requires one).
    #[derive(Clone)]
    struct Path {
        channel: ChannelKind,
        token: Option<http::HeaderValue>,
    }

    #[derive(Clone)]
    // A handful of these per run: their size does not matter.
    #[allow(clippy::large_enum_variant)]
    enum ChannelKind {
        Raw(transport::Channel),
        Pool(streamgate::client::PoolChannel),
        /// The peer stack's client: tonic over mutual TLS with tower-http's
        /// `TraceLayer` and tower's `Timeout`.
        Peer(PeerChannel),
    }

    type PeerChannel = tower::util::BoxCloneSyncService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        PeerError,
    >;

    /// The peer client's error, named (a bare `BoxError` in a `Send`
    /// future trips the compiler's higher-ranked lifetime check).
    #[derive(Debug)]
    struct PeerError(tower::BoxError);

    impl std::fmt::Display for PeerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    impl std::error::Error for PeerError {}

    /// The peer stack's client: tower-http's `TraceLayer` and tower's
    /// `Timeout` around `inner` (a channel, or more stock parts over one).
    fn peer_channel<S, B>(inner: S) -> PeerChannel
    where
        S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<tower::BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError> + std::fmt::Display,
    {
        tower::util::BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .map_err(PeerError)
                .map_response(|r: http::Response<_>| r.map(tonic::body::Body::new))
                .layer(tower_http::trace::TraceLayer::new_for_grpc())
                .timeout(Duration::from_secs(30))
                .service(inner),
        )
    }

    /// The peer stack's client with the parts of the pool's features it
    /// lacked: tower's p2c balancer over the instances (one here), each
    /// counted by its pending requests, behind tower's `Buffer` (the
    /// balancer is not `Clone`; tonic's own balanced channel is built the
    /// same way), a latency histogram per method, and the trace context
    /// sent through OpenTelemetry's propagator. No circuit breaker: tower
    /// has none.
    fn peer_both_channel(channel: transport::Channel) -> PeerChannel {
        let instances = vec![tower::load::PendingRequests::new(
            channel,
            tower::load::CompleteOnResponse::default(),
        )];
        let balanced = tower::buffer::Buffer::new(
            tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(instances)),
            1024,
        );
        let latency = peer::latency();
        peer_channel(
            tower::ServiceBuilder::new()
                .map_request(peer::inject)
                .layer(tower::layer::layer_fn(move |s| peer::timed(s, &latency)))
                .service(balanced),
        )
    }

    async fn run(path: Path, round: Duration, concurrency: usize) -> Figures {
        match path.channel {
            ChannelKind::Raw(ch) => {
                let token = path.token;
                measure(
                    round,
                    concurrency,
                    move || CacheServiceClient::new(ch.clone()),
                    move |mut c| {
                        let token = token.clone();
                        Box::pin(async move {
                            let mut req = request();
                            if let Some(t) = token {
                                req.metadata_mut().insert(
                                    streamgate::middleware::auth::HEADER,
                                    tonic::metadata::MetadataValue::try_from(t.as_bytes())
                                        .expect("token"),
                                );
                            }
                            c.get(req).await.expect("raw call");
                            c
                        })
                    },
                )
                .await
            }
            ChannelKind::Pool(ch) => {
                measure(
                    round,
                    concurrency,
                    move || CacheServiceClient::new(ch.clone()),
                    |mut c| {
                        Box::pin(async move {
                            c.get(request()).await.expect("pool call");
                            c
                        })
                    },
                )
                .await
            }
            ChannelKind::Peer(ch) => {
                measure(
                    round,
                    concurrency,
                    move || CacheServiceClient::new(ch.clone()),
                    |mut c| {
                        Box::pin(async move {
                            c.get(request()).await.expect("peer call");
                            c
                        })
                    },
                )
                .await
            }
        }
    }

    /// Prints one table: each row's median round (by throughput), as
    /// ratios against the first row.
    fn report<'a>(
        concurrency: usize,
        names: impl Iterator<Item = &'a str>,
        runs: Vec<Vec<Figures>>,
    ) {
        let figures: Vec<Figures> = runs
            .into_iter()
            .map(|runs| support::median_by(runs, |f| f.per_sec))
            .collect();
        let base = &figures[0];
        println!("concurrency {concurrency}:");
        for (name, f) in names.zip(&figures) {
            println!(
                "  {name:<40} {:>8.0} calls/s  p50 {:>6.0?}  p99 {:>6.0?} | throughput {}, p99 {}",
                f.per_sec,
                f.p50,
                f.p99,
                Ratio::of(f.per_sec, base.per_sec),
                Ratio::of(f.p99.as_secs_f64(), base.p99.as_secs_f64()),
            );
        }
    }

    /// `--profile PATH CALLS`: the index of one path (0 baseline, 1 client
    /// side, 2 server side, 3 both; over mutual TLS: 4 baseline, 5 the peer
    /// stack, 6 both, 7 the peer stack with client parts)
    /// and how many calls to make on it.
    fn profile_args() -> Option<(usize, usize)> {
        let values = support::flag_values("--profile", 2)?;
        let path = values[0].parse().ok().filter(|p| *p < 8)?;
        let calls = values[1].parse().ok()?;
        Some((path, calls))
    }

    /// `--only PATH CONCURRENCY SECONDS`: one path (numbered as for
    /// `--profile`) at one concurrency for a while, for `perf stat` or
    /// `perf record` at a load callgrind's one-call-at-a-time run misses.
    fn only_args() -> Option<(usize, usize, u64)> {
        let values = support::flag_values("--only", 3)?;
        let path = values[0].parse().ok().filter(|p| *p < 8)?;
        Some((path, values[1].parse().ok()?, values[2].parse().ok()?))
    }

    pub fn main() -> anyhow::Result<()> {
        let rounds = Rounds::new(support::opts(), ROUNDS, 0, ROUND);
        let keys = Keyring::generate("bench");
        let registry = Arc::new(MemoryRegistry::new());
        let tls_registry = Arc::new(MemoryRegistry::new());
        let certs_dir = tempfile::tempdir()?;
        let (cache_tls, caller_tls) = identities(certs_dir.path())?;
        let Servers {
            bare,
            full,
            bare_tls,
            peer_tls,
            peer_both_tls,
        } = start_servers(
            keys.clone(),
            registry.clone(),
            tls_registry.clone(),
            cache_tls,
        )?;
        support::current_thread()?.block_on(async move {
            // The bare server, registered under a name of its own, so the
            // pool's client side can be measured against it alone.
            let mut info = registry.discover("cache").await.expect("cache")[0].clone();
            info.name = "cache-bare".into();
            info.id = "cache-bare-1".into();
            info.port = bare.port();
            registry.register(&info).await.expect("register");
            let pool = ClientPool::new(registry, PoolConfig::new(keys.clone(), "bench"));
            let mut tls_config = PoolConfig::new(keys.clone(), "api-gateway");
            tls_config.tls = Some(caller_tls.clone());
            let tls_pool = ClientPool::new(tls_registry, tls_config);
            let token = http::HeaderValue::try_from(streamgate::middleware::auth::mint(
                &keys.current,
                "bench",
                rt::unix_ms() + 3_600_000,
            ))
            .expect("token");
            let paths = [
                ("raw tonic -> bare server (baseline)", Path { channel: ChannelKind::Raw(transport::channel(bare)), token: None }),
                ("pool -> bare server (client side)", Path { channel: ChannelKind::Pool(pool.channel("cache-bare").await.expect("pool")), token: None }),
                ("raw tonic -> full server (server side)", Path { channel: ChannelKind::Raw(transport::channel(full)), token: Some(token) }),
                ("pool -> full server (both)", Path { channel: ChannelKind::Pool(pool.channel("cache").await.expect("pool")), token: None }),
                ("mTLS: raw tonic -> bare server (baseline)", Path { channel: ChannelKind::Raw(transport::channel_to(bare_tls, Some(&caller_tls), "cache")), token: None }),
                ("mTLS: peer stack (stock parts)", Path { channel: ChannelKind::Peer(peer_channel(transport::channel_to(peer_tls, Some(&caller_tls), "cache"))), token: None }),
                ("mTLS: pool -> full server, policy (both)", Path { channel: ChannelKind::Pool(tls_pool.channel("cache").await.expect("pool")), token: None }),
                ("mTLS: peer stack, client parts too", Path { channel: ChannelKind::Peer(peer_both_channel(transport::channel_to(peer_both_tls, Some(&caller_tls), "cache"))), token: None }),
            ];
            let (plain, tls) = paths.split_at(4);
            if let Some((path, concurrency, seconds)) = only_args() {
                let (name, path) = &paths[path];
                let f = run(path.clone(), Duration::from_secs(seconds), concurrency).await;
                println!(
                    "{name}: {:.0} calls/s at {concurrency} in flight, p99 {:?}",
                    f.per_sec, f.p99
                );
                return Ok(());
            }
            if let Some((path, calls)) = profile_args() {
                // For a profiler (e.g. `valgrind --tool=callgrind`): one path,
                // a fixed number of calls, one at a time, nothing measured.
                let (name, path) = &paths[path];
                match path.channel.clone() {
                    ChannelKind::Raw(ch) => {
                        let mut c = CacheServiceClient::new(ch);
                        for _ in 0..calls {
                            let mut req = request();
                            if let Some(t) = &path.token {
                                req.metadata_mut().insert(
                                    streamgate::middleware::auth::HEADER,
                                    tonic::metadata::MetadataValue::try_from(t.as_bytes())
                                        .expect("token"),
                                );
                            }
                            c.get(req).await.expect("raw call");
                        }
                    }
                    ChannelKind::Pool(ch) => {
                        let mut c = CacheServiceClient::new(ch);
                        for _ in 0..calls {
                            c.get(request()).await.expect("pool call");
                        }
                    }
                    ChannelKind::Peer(ch) => {
                        let mut c = CacheServiceClient::new(ch);
                        for _ in 0..calls {
                            c.get(request()).await.expect("peer call");
                        }
                    }
                }
                println!("{calls} calls on {name}");
                return Ok(());
            }
            println!(
                "unary CacheService/Get, {} interleaved rounds of {:?} each; ratios against the baseline",
                rounds.rounds, rounds.round
            );
            // Spans are exported from here on only when the export table
            // below asks (paused otherwise).
            let export = !std::env::args().any(|a| a == "--no-export");
            if export {
                let (collector, _received) = streamgate_testkit::otlp::serve();
                let exporter = streamgate::telemetry::otlp::Exporter::start(
                    &streamgate::telemetry::otlp::Settings {
                        endpoint: Some(format!("http://{collector}")),
                        ratio: 1.0,
                        service_name: "bench".into(),
                    },
                )
                .map_err(anyhow::Error::msg)?;
                streamgate::telemetry::install(Box::new(exporter), 1.0)
                    .map_err(anyhow::Error::msg)?;
                streamgate::telemetry::pause(true, 1.0);
            }
            for (title, table) in [("plaintext", plain), ("mutual TLS", tls)] {
                println!("{title}:");
                for concurrency in [1usize, 64] {
                    let runs = rounds
                        .interleaved(table.len(), async |path, _| {
                            Ok(run(table[path].1.clone(), rounds.round, concurrency).await)
                        })
                        .await?;
                    report(concurrency, table.iter().map(|(name, _)| *name), runs);
                }
            }
            if export {
                let modes: [(&str, Option<f64>); 3] = [
                    ("pool -> full server, export off", None),
                    ("pool -> full server, export 1 %", Some(0.01)),
                    ("pool -> full server, export 100 %", Some(1.0)),
                ];
                let full = paths[3].1.clone();
                println!("span export (OTLP/gRPC to a receiver in this process); ratios against export off");
                for concurrency in [1usize, 64] {
                    let runs = rounds
                        .interleaved(modes.len(), async |mode, _| {
                            match modes[mode].1 {
                                None => streamgate::telemetry::pause(true, 1.0),
                                Some(ratio) => streamgate::telemetry::pause(false, ratio),
                            }
                            let figures = run(full.clone(), rounds.round, concurrency).await;
                            streamgate::telemetry::pause(true, 1.0);
                            Ok(figures)
                        })
                        .await?;
                    report(concurrency, modes.iter().map(|(name, _)| *name), runs);
                }
            }
            anyhow::Ok(())
        })
    }
}
