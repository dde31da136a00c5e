//! Metrics: a per-node Prometheus registry served as text on the admin
//! listener's `/metrics`; the gRPC server layer that counts calls by service,
//! method and status, times them, and tracks calls in flight; the HTTP layer
//! that times requests by method, route template and status code
//! ([`HttpMetricsLayer`]); the pipeline's counters and histograms (upload,
//! transcode, jobs) and the process's (CPU, memory, file descriptors,
//! threads, read from `/proc` on Linux, never under the simulator). The
//! pool's breaker states and the retriers' counters are registered here too.
//!
//! Names: `streamgate_*` for our own series; the HTTP histogram and the
//! process series carry the names dashboards already know
//! (`http_server_request_duration_seconds` after OpenTelemetry's
//! `http.server.request.duration`, with its attribute names as labels;
//! `process_*` as Prometheus's client libraries export them).

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::middleware::trace::{self, TraceContext};
use crate::resilience::breaker::Transition;
use crate::rt::{self, Instant};
use crate::telemetry;

/// A call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// gRPC service (or `http`).
    pub service: String,
    /// Method (or path).
    pub method: String,
}

/// A finished call's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DoneLabels {
    /// gRPC service (or `http`).
    pub service: String,
    /// Method (or path).
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// The outcome of a read-through cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheReadLabels {
    /// `hit`, `miss` or `fallback` (the cache failed, timed out or has no
    /// instance: the read went to the source directly).
    pub outcome: String,
}

/// What an orphaned blob the upload service's sweep removed was.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrphanLabels {
    /// `original`, `hls` (a video's tree) or `thumbnail`.
    pub kind: String,
}

/// How a piece of pipeline work ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

impl OutcomeLabels {
    fn of(ok: bool) -> Self {
        Self {
            outcome: if ok { "ok" } else { "error" },
        }
    }
}

/// An HTTP request's labels: OpenTelemetry's attribute names, dots made
/// underscores. Each is bounded: the method is one of the standard nine or
/// `_OTHER`, the route is a template of the router (never the raw path) or
/// [`UNMATCHED_ROUTE`], and the status is a number the server chose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `GET`, `POST`, ... or `_OTHER`.
    pub http_request_method: &'static str,
    /// The route template (axum's `MatchedPath`, e.g. `/v1/videos/{id}`).
    pub http_route: String,
    /// The response's status code (499: the client went away before the
    /// response head).
    pub http_response_status_code: u16,
}

/// The route label of a request no route matched (a 404 of the fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The status label of a request whose client went away before the
/// response head (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// A called instance's labels (a breaker's). Bounded by the instances the
/// registry reports. Not `instance`: Prometheus gives that name to the
/// scraped process.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The called service (`metadata`, ...).
    pub target: String,
    /// The called instance's id (`metadata-10.0.0.5-9005`).
    pub endpoint: String,
}

/// A breaker transition's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The called service.
    pub target: String,
    /// The called instance's id.
    pub endpoint: String,
    /// The state entered: `closed`, `half_open` or `open`.
    pub to: &'static str,
}

/// A called service's labels (retries are per service, not per instance:
/// a retry may go to another one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The called service (`worker`, `streaming`, ...; `other` for a
    /// retrier not told its target).
    pub target: String,
}

/// A job state's labels (the active ones: `queued`, `leased`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabels {
    /// The state.
    pub state: &'static str,
}

/// An event type's labels (one of the bus's fixed event types).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The event's subject (`video.uploaded`, ...).
    pub event_type: &'static str,
}

/// A publish's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The event's subject.
    pub event_type: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// Distinct call label sets (service, method) kept; calls on further paths
/// (only a misbehaving client sends many) count under `http`/`other`.
pub const MAX_CALL_LABELS: usize = 256;

/// What a call on one path updates, looked up once per call (no label
/// strings built on the way).
struct CallMetrics {
    labels: CallLabels,
    /// The code a call whose service failed (no response at all) counts
    /// under: `Internal` on the server, `Unavailable` on the client (the
    /// channel could not carry it).
    on_error: tonic::Code,
    in_flight: Gauge,
    latency: Histogram,
    requests: Family<DoneLabels, Counter>,
    /// The requests counter per gRPC code (by its number), made on first use.
    by_code: [std::sync::OnceLock<Counter>; 17],
}

impl CallMetrics {
    fn done(&self, code: tonic::Code) {
        let i = usize::try_from(code as i32).unwrap_or(0).min(16);
        self.by_code[i]
            .get_or_init(|| {
                self.requests.get_or_create_owned(&DoneLabels {
                    service: self.labels.service.clone(),
                    method: self.labels.method.clone(),
                    code: format!("{code:?}"),
                })
            })
            .inc();
    }
}

/// The series of each request path: at most [`MAX_CALL_LABELS`] keys, so
/// the fixed-seed hasher is safe.
type CallMap = crate::FixedHashMap<String, Arc<CallMetrics>>;

struct Inner {
    registry: Registry,
    /// Per request path, at most [`MAX_CALL_LABELS`].
    calls: CallMap,
    requests: Family<DoneLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    in_flight: Family<CallLabels, Gauge>,
    breaker_state: Family<EndpointLabels, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    retries: Family<TargetLabels, Counter>,
    budget_exhausted: Family<TargetLabels, Counter>,
    cache_reads: Family<CacheReadLabels, Counter>,
    orphans_removed: Family<OrphanLabels, Counter>,
    orphan_sweeps: Counter,
    client: ClientCalls,
}

/// The client side's call series (`streamgate_client_*`), as the server's.
struct ClientCalls {
    /// Per request path, at most [`MAX_CALL_LABELS`].
    calls: CallMap,
    requests: Family<DoneLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    in_flight: Family<CallLabels, Gauge>,
}

impl ClientCalls {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            calls: CallMap::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            in_flight: Family::default(),
        };
        registry.register(
            "client_requests",
            "gRPC calls made through the client pool, by status (as the caller saw it)",
            this.requests.clone(),
        );
        registry.register(
            "client_request_duration_seconds",
            "gRPC calls made through the client pool: time to their status",
            this.latency.clone(),
        );
        registry.register(
            "client_in_flight",
            "gRPC calls made through the client pool, not yet ended",
            this.in_flight.clone(),
        );
        this
    }
}

/// Which end of its calls a [`MetricsLayer`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Calls served (`streamgate_requests_total`, ...).
    Server,
    /// Calls made (`streamgate_client_requests_total`, ...).
    Client,
}

/// The pipeline's series (handles onto the registry's).
#[derive(Debug)]
struct Pipeline {
    upload_bytes: Counter,
    upload_duration: Family<OutcomeLabels, Histogram>,
    transcode_duration: Family<OutcomeLabels, Histogram>,
    job_attempts_failed: Counter,
    jobs_dead_lettered: Counter,
    jobs_completed: Counter,
    job_queue_depth: Family<JobStateLabels, Gauge>,
    job_queue_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// The event bus's series (outside the lock: publishes are a hot path).
#[derive(Debug)]
struct BusSeries {
    publishes: Family<PublishLabels, Counter>,
    deliveries: Family<EventLabels, Counter>,
    handler_failures: Family<EventLabels, Counter>,
    lag: Family<EventLabels, Histogram>,
}

impl BusSeries {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            publishes: Family::default(),
            deliveries: Family::default(),
            handler_failures: Family::default(),
            // 1 ms to about 33 s.
            lag: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        };
        registry.register(
            "bus_lag_seconds",
            "Time from an event's publication (its envelope's time) to the start of its handling in this process, by event type",
            this.lag.clone(),
        );
        registry.register(
            "bus_publishes",
            "Events published on the bus, by event type and outcome (ok, error)",
            this.publishes.clone(),
        );
        registry.register(
            "bus_deliveries",
            "Events delivered to this process's bus handlers, by event type",
            this.deliveries.clone(),
        );
        registry.register(
            "bus_handler_failures",
            "Bus handler runs that failed (an error or a panic), by event type",
            this.handler_failures.clone(),
        );
        this
    }
}

/// The node's metrics; cheap to clone (one reference count: layers'
/// services holding it are cloned for every request).
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

/// What [`Metrics`] clones share.
struct Shared {
    inner: Mutex<Inner>,
    /// Outside the lock: the HTTP layer records without taking it.
    http: Family<HttpLabels, Histogram>,
    pipeline: Pipeline,
    bus: BusSeries,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let http = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
        });
        root.register(
            "http_server_request_duration_seconds",
            "HTTP requests served, by method, route template and status code: time to the \
             response head",
            http.clone(),
        );
        process::register(&mut root);
        root.register_collector(Box::new(SpanCounts));
        let registry = root.sub_registry_with_prefix("streamgate");
        let pipeline = Pipeline::register(registry);
        let bus = BusSeries::register(registry);
        let requests = Family::<DoneLabels, Counter>::default();
        let latency = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        let in_flight = Family::<CallLabels, Gauge>::default();
        let breaker_state = Family::<EndpointLabels, Gauge>::default();
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        let retries = Family::<TargetLabels, Counter>::default();
        let budget_exhausted = Family::<TargetLabels, Counter>::default();
        let cache_reads = Family::<CacheReadLabels, Counter>::default();
        let orphans_removed = Family::<OrphanLabels, Counter>::default();
        let orphan_sweeps = Counter::default();
        registry.register("requests", "Calls served, by status", requests.clone());
        registry.register(
            "request_duration_seconds",
            "gRPC calls: time to their status (the end of a stream)",
            latency.clone(),
        );
        registry.register("in_flight", "Calls being served", in_flight.clone());
        registry.register(
            "breaker_state",
            "Client breaker per called service and instance: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Client breaker transitions per called service and instance, by the state entered",
            breaker_transitions.clone(),
        );
        registry.register(
            "retries",
            "Retries made by clients, per called service",
            retries.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget, per called service",
            budget_exhausted.clone(),
        );
        registry.register(
            "cache_reads",
            "Read-through cache lookups by outcome (hit, miss, fallback)",
            cache_reads.clone(),
        );
        registry.register(
            "orphans_removed",
            "Blobs no video record names, removed by the upload service's sweep, by kind",
            orphans_removed.clone(),
        );
        registry.register(
            "orphan_sweeps",
            "Orphan sweeps of the upload service that went through every blob",
            orphan_sweeps.clone(),
        );
        let client = ClientCalls::register(registry);
        let inner = Inner {
            client,
            registry: root,
            calls: CallMap::default(),
            requests,
            latency,
            in_flight,
            breaker_state,
            breaker_transitions,
            retries,
            budget_exhausted,
            cache_reads,
            orphans_removed,
            orphan_sweeps,
        };
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                http,
                pipeline,
                bus,
            }),
        }
    }
}

impl Pipeline {
    fn register(registry: &mut Registry) -> Self {
        let this = Self {
            upload_bytes: Counter::default(),
            // 10 ms to about 5.5 min.
            upload_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 16))
            }),
            // 100 ms to about 55 min.
            transcode_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.1, 2.0, 16))
            }),
            job_attempts_failed: Counter::default(),
            jobs_dead_lettered: Counter::default(),
            jobs_completed: Counter::default(),
            job_queue_depth: Family::default(),
            job_queue_oldest_age: Gauge::default(),
        };
        registry.register(
            "upload_bytes",
            "Bytes of the uploads stored (acknowledged)",
            this.upload_bytes.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Uploads served by the upload service, by outcome: from the first chunk to the answer",
            this.upload_duration.clone(),
        );
        registry.register(
            "transcode_duration_seconds",
            "Transcodes run by the transcoder service, by outcome (cancelled ones are not counted)",
            this.transcode_duration.clone(),
        );
        registry.register(
            "job_attempts_failed",
            "Job attempts that failed (retried or dead-lettered), including attempts lost with a worker",
            this.job_attempts_failed.clone(),
        );
        registry.register(
            "jobs_dead_lettered",
            "Jobs the worker gave up on (out of attempts, or a permanent failure)",
            this.jobs_dead_lettered.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs the worker completed",
            this.jobs_completed.clone(),
        );
        for state in ["queued", "leased"] {
            drop(
                this.job_queue_depth
                    .get_or_create(&JobStateLabels { state }),
            );
        }
        registry.register(
            "job_queue_depth",
            "Jobs queued or leased (running), as the worker last counted them (every few seconds)",
            this.job_queue_depth.clone(),
        );
        registry.register(
            "job_queue_oldest_age_seconds",
            "How long the queued job that has been runnable longest has waited (0: none waits)",
            this.job_queue_oldest_age.clone(),
        );
        this
    }
}

fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        _ => ("http".to_owned(), "other".to_owned()),
    }
}

/// OpenMetrics text, as [`Metrics::render`] writes it, as Prometheus text
/// format 0.0.4 (see [`Metrics::render_classic`]).
fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    // A family's HELP line, held until its TYPE line says whether it is a
    // counter (OpenMetrics writes HELP first).
    let mut help: Option<(&str, &str)> = None;
    let flush_help = |out: &mut String, help: Option<(&str, &str)>, suffix: &str| {
        if let Some((name, text)) = help {
            let _ = writeln!(out, "# HELP {name}{suffix} {text}");
        }
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            match help.take() {
                Some(held) if held.0 == name => flush_help(&mut out, Some(held), suffix),
                other => flush_help(&mut out, other, ""),
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            flush_help(&mut out, help.take(), "");
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, "");
    out
}

/// Whether a request is a gRPC call (counted by [`MetricsLayer`]; the rest
/// by [`HttpMetricsLayer`]).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The method label: one of the nine standard methods, or `_OTHER`
/// (OpenTelemetry's rule), so a client cannot make series of its own.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self
            .shared
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|i| prometheus_client::encoding::text::encode(&mut out, &i.registry))
            .unwrap_or_else(|e| {
                let _ = writeln!(out, "# encoding failed: {e}");
            });
        out
    }

    /// The Prometheus text format 0.0.4 (what a client that does not ask
    /// for OpenMetrics reads, `promtool check metrics` among them): the
    /// same samples as [`Metrics::render`], with the two formats'
    /// differences made: a counter's `HELP` and `TYPE` name its `_total`
    /// series, and there are no `UNIT` or `EOF` lines.
    #[must_use]
    pub fn render_classic(&self) -> String {
        to_classic(&self.render())
    }

    /// Records a breaker transition of the caller's breaker towards
    /// `endpoint`, an instance of `target` (the pool's hook).
    pub fn breaker(&self, target: &str, endpoint: &str, t: Transition) {
        let (state, to) = match t {
            Transition::Closed => (0, "closed"),
            Transition::Probing => (1, "half_open"),
            Transition::Tripped { .. } | Transition::Reopened { .. } => (2, "open"),
        };
        let labels = EndpointLabels {
            target: target.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        let transition = TransitionLabels {
            target: labels.target.clone(),
            endpoint: labels.endpoint.clone(),
            to,
        };
        self.with(|i| {
            i.breaker_state.get_or_create(&labels).set(state);
            i.breaker_transitions.get_or_create(&transition).inc();
        });
    }

    /// The breaker state last recorded towards `endpoint` of `target` (0
    /// closed, 1 half-open, 2 open; `None`: no transition yet).
    #[must_use]
    pub fn breaker_state(&self, target: &str, endpoint: &str) -> Option<i64> {
        let labels = EndpointLabels {
            target: target.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        self.with(|i| i.breaker_state.get(&labels).map(|g| g.get()))
    }

    /// Puts the retry counters of each of `targets` on the exposition at
    /// 0 (the host does, for every service), so the first retry or refusal
    /// is an increase a rule sees, not a series appearing.
    pub fn expect_targets<'a>(&self, targets: impl IntoIterator<Item = &'a str>) {
        self.with(|i| {
            for target in targets {
                let labels = TargetLabels {
                    target: target.to_owned(),
                };
                drop(i.retries.get_or_create(&labels));
                drop(i.budget_exhausted.get_or_create(&labels));
            }
        });
    }

    /// Counts a retry of a call to `target`.
    pub fn retried(&self, target: &str) {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        self.with(|i| i.retries.get_or_create(&labels).inc());
    }

    /// Counts a retry to `target` the retry budget refused.
    pub fn retry_refused(&self, target: &str) {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        self.with(|i| i.budget_exhausted.get_or_create(&labels).inc());
    }

    /// Retries of calls to `target` so far, and those the budget refused.
    #[must_use]
    pub fn retries(&self, target: &str) -> (u64, u64) {
        let labels = TargetLabels {
            target: target.to_owned(),
        };
        self.with(|i| {
            (
                i.retries.get(&labels).map_or(0, |c| c.get()),
                i.budget_exhausted.get(&labels).map_or(0, |c| c.get()),
            )
        })
    }

    /// Sets the job queue's gauges: jobs `queued`, `leased` and `failed`
    /// (waiting for a retry), and how long the runnable queued job that has
    /// waited longest has waited.
    pub fn job_queue(
        &self,
        queued: u64,
        leased: u64,
        failed: u64,
        oldest_wait: std::time::Duration,
    ) {
        for (state, n) in [("queued", queued), ("leased", leased), ("failed", failed)] {
            self.shared
                .pipeline
                .job_queue_depth
                .get_or_create(&JobStateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.shared
            .pipeline
            .job_queue_oldest_age
            .set(oldest_wait.as_secs_f64());
    }

    /// Counts a publish of an event of `event_type` (its subject) that
    /// went through (`ok`) or not.
    pub fn bus_published(&self, event_type: &'static str, ok: bool) {
        self.shared
            .bus
            .publishes
            .get_or_create(&PublishLabels {
                event_type,
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts an event of `event_type` delivered to a handler, and whether
    /// the handler failed.
    pub fn bus_delivered(&self, event_type: &'static str, ok: bool) {
        let labels = EventLabels { event_type };
        self.shared.bus.deliveries.get_or_create(&labels).inc();
        if !ok {
            self.shared
                .bus
                .handler_failures
                .get_or_create(&labels)
                .inc();
        }
    }

    /// Records that an event of `event_type` published at `published_ms`
    /// (Unix ms, the envelope's time) is being handled now (a clock behind
    /// the publisher's counts as no lag).
    pub fn bus_lag(&self, event_type: &'static str, published_ms: u64) {
        let lag_ms = rt::unix_ms().saturating_sub(published_ms);
        #[allow(clippy::cast_precision_loss)]
        let lag = lag_ms as f64 / 1000.0;
        self.shared
            .bus
            .lag
            .get_or_create(&EventLabels { event_type })
            .observe(lag);
    }

    /// Counts a read-through cache lookup (`hit`, `miss` or `fallback`).
    pub fn cache_read(&self, outcome: &str) {
        let labels = CacheReadLabels {
            outcome: outcome.to_owned(),
        };
        self.with(|i| i.cache_reads.get_or_create(&labels).inc());
    }

    /// Read-through cache lookups with `outcome` so far.
    #[must_use]
    pub fn cache_reads(&self, outcome: &str) -> u64 {
        let labels = CacheReadLabels {
            outcome: outcome.to_owned(),
        };
        self.with(|i| i.cache_reads.get_or_create(&labels).get())
    }

    /// Counts an orphaned blob removed (`original`, `hls` or `thumbnail`).
    pub fn orphan_removed(&self, kind: &str) {
        let labels = OrphanLabels {
            kind: kind.to_owned(),
        };
        self.with(|i| i.orphans_removed.get_or_create(&labels).inc());
    }

    /// Orphaned blobs of `kind` removed so far.
    #[must_use]
    pub fn orphans_removed(&self, kind: &str) -> u64 {
        let labels = OrphanLabels {
            kind: kind.to_owned(),
        };
        self.with(|i| i.orphans_removed.get_or_create(&labels).get())
    }

    /// Counts an orphan sweep that went through every blob.
    pub fn orphan_sweep_finished(&self) {
        self.with(|i| i.orphan_sweeps.inc());
    }

    /// Orphan sweeps finished so far.
    #[must_use]
    pub fn orphan_sweeps(&self) -> u64 {
        self.with(|i| i.orphan_sweeps.get())
    }

    /// Counts a stored upload of `bytes` bytes.
    pub fn upload_stored(&self, bytes: u64) {
        self.shared.pipeline.upload_bytes.inc_by(bytes);
    }

    /// Bytes of stored uploads so far.
    #[must_use]
    pub fn upload_bytes(&self) -> u64 {
        self.shared.pipeline.upload_bytes.get()
    }

    /// Times an upload that took `took` and ended well (`ok`) or not.
    pub fn upload_finished(&self, ok: bool, took: std::time::Duration) {
        self.shared
            .pipeline
            .upload_duration
            .get_or_create(&OutcomeLabels::of(ok))
            .observe(took.as_secs_f64());
    }

    /// Times a transcode that took `took` and ended well (`ok`) or not.
    pub fn transcode_finished(&self, ok: bool, took: std::time::Duration) {
        self.shared
            .pipeline
            .transcode_duration
            .get_or_create(&OutcomeLabels::of(ok))
            .observe(took.as_secs_f64());
    }

    /// Counts a failed job attempt, and the job's end when `dead_letter`.
    pub fn job_attempt_failed(&self, dead_letter: bool) {
        self.shared.pipeline.job_attempts_failed.inc();
        if dead_letter {
            self.shared.pipeline.jobs_dead_lettered.inc();
        }
    }

    /// Counts a completed job.
    pub fn job_completed(&self) {
        self.shared.pipeline.jobs_completed.inc();
    }

    /// Jobs dead-lettered so far.
    #[must_use]
    pub fn jobs_dead_lettered(&self) -> u64 {
        self.shared.pipeline.jobs_dead_lettered.get()
    }

    /// The handles of calls on `path` on `side` (made on its first call).
    fn call(&self, side: Side, path: &str) -> Arc<CallMetrics> {
        let mut guard = self
            .shared
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = &mut *guard;
        let (calls, requests, latency, in_flight, on_error) = match side {
            Side::Server => (
                &mut inner.calls,
                &inner.requests,
                &inner.latency,
                &inner.in_flight,
                tonic::Code::Internal,
            ),
            Side::Client => (
                &mut inner.client.calls,
                &inner.client.requests,
                &inner.client.latency,
                &inner.client.in_flight,
                tonic::Code::Unavailable,
            ),
        };
        if let Some(call) = calls.get(path) {
            return call.clone();
        }
        let (service, method) = if calls.len() < MAX_CALL_LABELS {
            split_path(path)
        } else {
            ("http".to_owned(), "other".to_owned())
        };
        let labels = CallLabels { service, method };
        let call = Arc::new(CallMetrics {
            in_flight: in_flight.get_or_create_owned(&labels),
            latency: latency.get_or_create_owned(&labels),
            requests: requests.clone(),
            by_code: Default::default(),
            on_error,
            labels,
        });
        if calls.len() < MAX_CALL_LABELS {
            calls.insert(path.to_owned(), call.clone());
        }
        call
    }
}

/// Records every gRPC call in [`Metrics`]: calls served
/// ([`MetricsLayer::new`], the server stack's) or calls made
/// ([`MetricsLayer::client`], the client pool's channels).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
    side: Side,
}

impl MetricsLayer {
    /// Records calls served into `metrics`.
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            side: Side::Server,
        }
    }

    /// Records calls made into `metrics` (`streamgate_client_*`).
    #[must_use]
    pub fn client(metrics: Metrics) -> Self {
        Self {
            metrics,
            side: Side::Client,
        }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measure<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measure {
            inner,
            metrics: self.metrics.clone(),
            side: self.side,
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: Metrics,
    side: Side,
}

impl<S, B, ResBody> Service<Request<B>> for Measure<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: 'static,
    ResBody: http_body::Body,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !is_grpc(req.headers()) {
            // Plain HTTP (`/health`, `/ready`, the gateway's API): the
            // router's [`HttpMetricsLayer`] counts it, by route.
            return ResponseFuture {
                inner: self.inner.call(req),
                done: None,
            };
        }
        let call = self.metrics.call(self.side, req.uri().path());
        call.in_flight.inc();
        let span = grpc_span(self.side, &req);
        ResponseFuture {
            inner: self.inner.call(req),
            done: Some(Done {
                call,
                started: rt::now(),
                span,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// Hands the call on to the response body ([`MeteredBody`]), or
    /// records it when the head already says how it ended (or on drop).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        done: Option<Done>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(done) = this.project().done.take() {
                done.finish(tonic::Code::Cancelled);
            }
        }
    }
}

/// A gRPC call being measured: its series, its start and its span.
struct Done {
    call: Arc<CallMetrics>,
    started: Instant,
    span: Option<telemetry::Span>,
}

impl Done {
    /// Records the call as ended with `code`.
    fn finish(self, code: tonic::Code) {
        let Self {
            call,
            started,
            span,
        } = self;
        call.in_flight.dec();
        call.latency.observe((rt::now() - started).as_secs_f64());
        call.done(code);
        if let Some(mut span) = span {
            span.set("rpc.grpc.status_code", i64::from(code as i32));
            if code != tonic::Code::Ok {
                span.fail(format!("{code:?}"));
            }
            span.end();
        }
    }
}

/// The span of a gRPC call (when spans are exported): on the server side
/// the trace context [`crate::middleware::trace::ServerTraceLayer`] put in
/// the request, a child of the caller's span; on the client side the
/// `traceparent` the client trace layer is sending, a child of the task's
/// current span.
fn grpc_span<B>(side: Side, req: &Request<B>) -> Option<telemetry::Span> {
    if !telemetry::enabled() {
        return None;
    }
    let (service, method) = telemetry::grpc_method(req.uri().path())?;
    let (kind, context, parent, remote) = match side {
        Side::Server => {
            let (context, parent) = served(req)?;
            (telemetry::Kind::Server, context, parent, parent.is_some())
        }
        Side::Client => {
            let context = req
                .headers()
                .get(trace::HEADER)
                .and_then(|v| TraceContext::parse(v.as_bytes()))?;
            let parent = trace::current().map(|c| c.span_id);
            (telemetry::Kind::Client, context, parent, false)
        }
    };
    let mut span = telemetry::Span::start(
        kind,
        || format!("{service}/{method}"),
        context,
        parent,
        remote,
    )?;
    span.set("rpc.system", "grpc");
    span.set("rpc.service", service.to_owned());
    span.set("rpc.method", method.to_owned());
    Some(span)
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body,
    E: 'static,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let done = this.done.take();
        Poll::Ready(match result {
            Err(e) => {
                if let Some(done) = done {
                    // A client channel fails with the call's status (a
                    // deadline, a breaker's refusal); anything else is the
                    // side's failure code.
                    let code = (&e as &dyn std::any::Any)
                        .downcast_ref::<tonic::Status>()
                        .map_or(done.call.on_error, tonic::Status::code);
                    done.finish(code);
                }
                Err(e)
            }
            Ok(res) => {
                // A trailers-only answer (a unary call's error, a refusal)
                // has its status in the head; otherwise it comes in the
                // trailers, after the last message: the body records it.
                let head = crate::error::grpc_code(res.headers());
                let done = match (done, head) {
                    (Some(done), Some(code)) => {
                        done.finish(code);
                        None
                    }
                    (Some(done), None) if res.body().is_end_stream() => {
                        done.finish(tonic::Code::Unknown);
                        None
                    }
                    (done, _) => done,
                };
                Ok(res.map(|inner| MeteredBody { inner, done }))
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A gRPC response body that records its call with the status of its
    /// trailers (`Unknown` when it ends without one, `Internal` when it
    /// fails, `Cancelled` when dropped before its end: the client went away).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        done: Option<Done>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(done) = this.project().done.take() {
                done.finish(tonic::Code::Cancelled);
            }
        }
    }
}

impl<B: Default> Default for MeteredBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            done: None,
        }
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|trailers| crate::error::grpc_code(trailers).unwrap_or(tonic::Code::Unknown)),
            Some(Err(_)) => Some(tonic::Code::Internal),
            None => Some(tonic::Code::Unknown),
        };
        if let Some(code) = code
            && let Some(done) = this.done.take()
        {
            done.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// HTTP server side: times every plain HTTP request (gRPC calls are
/// [`MetricsLayer`]'s) into `http_server_request_duration_seconds` by
/// method, route template and status code. Added to an axum router with
/// `Router::layer`, so it sees the route the router matched
/// (`MatchedPath`); a request no route matched counts under
/// [`UNMATCHED_ROUTE`].
#[derive(Debug, Clone)]
pub struct HttpMetricsLayer {
    http: Family<HttpLabels, Histogram>,
}

impl HttpMetricsLayer {
    /// Records into `metrics`.
    #[must_use]
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            http: metrics.shared.http.clone(),
        }
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMeasure<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMeasure {
            inner,
            http: self.http.clone(),
        }
    }
}

/// See [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMeasure<S> {
    inner: S,
    http: Family<HttpLabels, Histogram>,
}

/// What an HTTP request will be recorded as, but its status.
struct HttpCall {
    http: Family<HttpLabels, Histogram>,
    method: &'static str,
    route: String,
    started: Instant,
    /// Its server span (when spans are exported), named by the route
    /// template, never the raw path.
    span: Option<telemetry::Span>,
}

impl HttpCall {
    fn finish(self, status: u16) {
        if let Some(mut span) = self.span {
            span.set("http.response.status_code", i64::from(status));
            if status >= 500 {
                span.fail(format!("HTTP {status}"));
            }
            span.end();
        }
        let labels = HttpLabels {
            http_request_method: self.method,
            http_route: self.route,
            http_response_status_code: status,
        };
        self.http
            .get_or_create(&labels)
            .observe((rt::now() - self.started).as_secs_f64());
    }
}

/// The context the server trace layer gave a request served, and the
/// caller's span (its parent) if the caller sent one.
fn served<B>(req: &Request<B>) -> Option<(TraceContext, Option<u64>)> {
    let served = req.extensions().get::<trace::Served>()?;
    Some((served.context, served.remote_parent))
}

/// The server span of a plain HTTP request on `route` (see
/// [`grpc_span`]).
fn http_span<B>(req: &Request<B>, method: &'static str, route: &str) -> Option<telemetry::Span> {
    if !telemetry::enabled() {
        return None;
    }
    let (context, parent) = served(req)?;
    let mut span = telemetry::Span::start(
        telemetry::Kind::Server,
        || format!("{method} {route}"),
        context,
        parent,
        parent.is_some(),
    )?;
    span.set("http.request.method", method);
    span.set("http.route", route.to_owned());
    Some(span)
}

impl<S, B, ResBody> Service<Request<B>> for HttpMeasure<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HttpResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let call = (!is_grpc(req.headers())).then(|| {
            let method = method_label(req.method());
            let route = req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .map_or(UNMATCHED_ROUTE, axum::extract::MatchedPath::as_str)
                .to_owned();
            HttpCall {
                http: self.http.clone(),
                span: http_span(&req, method, &route),
                method,
                route,
                started: rt::now(),
            }
        });
        HttpResponseFuture {
            inner: self.inner.call(req),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// Records the request when the response head is ready (or, as 499, on
    /// drop before it).
    pub struct HttpResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<HttpCall>,
    }

    impl<F> PinnedDrop for HttpResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(CLIENT_CLOSED);
            }
        }
    }
}

impl<F, ResBody, E> Future for HttpResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(call) = this.call.take() {
            // An error here becomes a 500 further out (axum's routes are
            // infallible; the error layer answers for the rest).
            let status = result.as_ref().map_or(500, |res| res.status().as_u16());
            call.finish(status);
        }
        Poll::Ready(result)
    }
}

/// Spans exported and dropped by the process's OTLP exporter
/// ([`telemetry::counts`]), read at each scrape.
#[derive(Debug)]
struct SpanCounts;

impl prometheus_client::collector::Collector for SpanCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        let (exported, dropped) = telemetry::counts();
        for (name, help, value) in [
            (
                "streamgate_spans_exported",
                "Spans the OTLP exporter sent to the collector",
                exported,
            ),
            (
                "streamgate_spans_dropped",
                "Spans the OTLP exporter lost: its queue was full, or the collector refused or could not be reached",
                dropped,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The process's own series, read from `/proc/self` at each scrape.
mod process {
    use prometheus_client::registry::Registry;

    /// Registers the `process_*` series (Linux; none under the simulator,
    /// where a process is not ours to read).
    pub(super) fn register(registry: &mut Registry) {
        #[cfg(all(target_os = "linux", not(madsim)))]
        registry.register_collector(Box::new(linux::Process));
        #[cfg(not(all(target_os = "linux", not(madsim))))]
        let _ = registry;
    }

    #[cfg(all(target_os = "linux", not(madsim)))]
    mod linux {
        use prometheus_client::collector::Collector;
        use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        #[derive(Debug)]
        pub(super) struct Process;

        fn gauge(
            encoder: &mut DescriptorEncoder<'_>,
            name: &str,
            help: &str,
            value: impl TryInto<i64>,
        ) -> Result<(), std::fmt::Error> {
            let Ok(value) = value.try_into() else {
                return Ok(());
            };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        }

        impl Collector for Process {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                // A series /proc does not give is left out of this scrape.
                let Ok(me) = procfs::process::Process::myself() else {
                    return Ok(());
                };
                if let Ok(stat) = me.stat() {
                    #[expect(clippy::cast_precision_loss, reason = "CPU ticks fit in f64")]
                    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
                    let counter = ConstCounter::new(cpu);
                    counter.encode(encoder.encode_descriptor(
                        "process_cpu_seconds",
                        "User and system CPU time spent, in seconds",
                        None,
                        counter.metric_type(),
                    )?)?;
                    gauge(
                        &mut encoder,
                        "process_resident_memory_bytes",
                        "Resident memory size in bytes",
                        stat.rss.saturating_mul(procfs::page_size()),
                    )?;
                    gauge(
                        &mut encoder,
                        "process_virtual_memory_bytes",
                        "Virtual memory size in bytes",
                        stat.vsize,
                    )?;
                    gauge(
                        &mut encoder,
                        "process_threads",
                        "OS threads of the process",
                        stat.num_threads,
                    )?;
                }
                if let Ok(fds) = me.fd_count() {
                    gauge(
                        &mut encoder,
                        "process_open_fds",
                        "Open file descriptors",
                        fds,
                    )?;
                }
                if let Ok(limits) = me.limits()
                    && let procfs::process::LimitValue::Value(max) =
                        limits.max_open_files.soft_limit
                {
                    gauge(
                        &mut encoder,
                        "process_max_fds",
                        "Most open file descriptors allowed",
                        max,
                    )?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    type TestBody = http_body_util::StreamBody<
        futures::stream::Iter<
            std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, Infallible>>,
        >,
    >;

    /// A response body of `messages`, then trailers with `grpc-status`
    /// `code` (none: no trailers).
    fn grpc_body(messages: &[&[u8]], code: Option<i32>) -> TestBody {
        let mut frames: Vec<_> = messages
            .iter()
            .map(|m| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(m))))
            .collect();
        if let Some(code) = code {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", code.into());
            frames.push(Ok(http_body::Frame::trailers(trailers)));
        }
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    fn grpc_request(path: impl AsRef<str>) -> Request<()> {
        Request::builder()
            .uri(path.as_ref())
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    }

    /// The value of the sample line starting `prefix` (labels included).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[tokio::test]
    async fn http_requests_count_by_route_template_and_status_with_bounded_labels() {
        use axum::routing::get;
        let metrics = Metrics::default();
        let app = axum::Router::new()
            .route(
                "/v1/videos/{id}",
                get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        if id == "broken" {
                            http::StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            http::StatusCode::OK
                        }
                    },
                ),
            )
            .route("/grpc.Svc/{*rest}", get(|| async { "grpc" }))
            .fallback(|| async { http::StatusCode::NOT_FOUND })
            .layer(HttpMetricsLayer::new(&metrics));
        let send = |method: &str, path: String| {
            let req = axum::extract::Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(req)
        };
        for id in ["a", "b", "broken"] {
            send("GET", format!("/v1/videos/{id}")).await.unwrap();
        }
        // A thousand junk paths and made-up methods: one series each.
        for n in 0..1000 {
            send("GET", format!("/junk/{n}")).await.unwrap();
        }
        for n in 0..10 {
            send(&format!("FOO{n}"), "/v1/videos/c".to_owned())
                .await
                .unwrap();
        }
        // gRPC calls are MetricsLayer's, not counted here.
        let grpc = axum::extract::Request::builder()
            .uri("/grpc.Svc/Get")
            .header("content-type", "application/grpc")
            .body(axum::body::Body::empty())
            .unwrap();
        app.clone().oneshot(grpc).await.unwrap();

        let text = metrics.render();
        let count = |method: &str, route: &str, status: u16| {
            sample(
                &text,
                &format!(
                    "http_server_request_duration_seconds_count{{http_request_method=\"{method}\",\
                     http_route=\"{route}\",http_response_status_code=\"{status}\"}}"
                ),
            )
        };
        assert_eq!(count("GET", "/v1/videos/{id}", 200), Some(2.0), "{text}");
        assert_eq!(count("GET", "/v1/videos/{id}", 500), Some(1.0), "{text}");
        assert_eq!(count("GET", UNMATCHED_ROUTE, 404), Some(1000.0), "{text}");
        assert_eq!(
            count("_OTHER", "/v1/videos/{id}", 405),
            Some(10.0),
            "{text}"
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .count();
        assert_eq!(series, 4, "{text}");
        assert!(!text.contains("grpc.Svc"), "{text}");
    }

    #[test]
    fn the_classic_text_names_counters_by_their_total_series() {
        let om = "# HELP a_requests Calls.\n# TYPE a_requests counter\n\
                  a_requests_total{x=\"1\"} 2\n# HELP b_in_flight Now.\n\
                  # TYPE b_in_flight gauge\n# UNIT b_in_flight seconds\nb_in_flight 1\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP a_requests_total Calls.\n# TYPE a_requests_total counter\n\
             a_requests_total{x=\"1\"} 2\n# HELP b_in_flight Now.\n\
             # TYPE b_in_flight gauge\nb_in_flight 1\n"
        );
    }

    #[tokio::test]
    async fn pipeline_series_are_rendered() {
        let metrics = Metrics::default();
        metrics.upload_stored(1000);
        metrics.upload_stored(24);
        metrics.upload_finished(true, std::time::Duration::from_millis(30));
        metrics.upload_finished(false, std::time::Duration::from_millis(5));
        metrics.transcode_finished(true, std::time::Duration::from_secs(3));
        metrics.job_attempt_failed(false);
        metrics.job_attempt_failed(true);
        metrics.job_completed();
        let text = metrics.render();
        assert_eq!(metrics.upload_bytes(), 1024);
        assert_eq!(metrics.jobs_dead_lettered(), 1);
        for (line, value) in [
            ("streamgate_upload_bytes_total ", 1024.0),
            (
                r#"streamgate_upload_duration_seconds_count{outcome="ok"}"#,
                1.0,
            ),
            (
                r#"streamgate_upload_duration_seconds_count{outcome="error"}"#,
                1.0,
            ),
            (
                r#"streamgate_transcode_duration_seconds_sum{outcome="ok"}"#,
                3.0,
            ),
            ("streamgate_job_attempts_failed_total ", 2.0),
            ("streamgate_jobs_dead_lettered_total ", 1.0),
            ("streamgate_jobs_completed_total ", 1.0),
        ] {
            assert_eq!(sample(&text, line), Some(value), "{line} in\n{text}");
        }
    }

    /// Read from /proc at each scrape (Linux only; the simulator has none).
    #[cfg(target_os = "linux")]
    #[test]
    fn process_series_come_from_proc() {
        let text = Metrics::default().render();
        for name in [
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
            "process_max_fds ",
        ] {
            let value = sample(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
            assert!(value >= 1.0, "{name} {value}");
        }
        assert!(
            sample(&text, "process_cpu_seconds_total ").is_some(),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn counts_calls_by_status_and_renders_prometheus_text() {
        let metrics = Metrics::default();
        let svc = tower::service_fn(|req: Request<()>| async move {
            let path = req.uri().path();
            if path.ends_with("/Fail") {
                // Trailers-only: the status in the head.
                let (parts, ()) = tonic::Status::not_found("no")
                    .into_http::<()>()
                    .into_parts();
                return Ok::<_, Infallible>(Response::from_parts(parts, grpc_body(&[], None)));
            }
            if path.ends_with("/Stream") {
                // Two messages, then an error in the trailers.
                return Ok(Response::new(grpc_body(&[b"one", b"two"], Some(13))));
            }
            Ok(Response::new(grpc_body(&[b"answer"], Some(0))))
        });
        let layer = MetricsLayer::new(metrics.clone());
        for path in [
            "/streamgate.v1.CacheService/Get",
            "/streamgate.v1.CacheService/Get",
            "/streamgate.v1.CacheService/Fail",
            "/streamgate.v1.CacheService/Stream",
            "/../../etc",
        ] {
            let res = layer.layer(svc).oneshot(grpc_request(path)).await.unwrap();
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
        }
        // A body dropped before its end: the client went away.
        let res = layer
            .layer(svc)
            .oneshot(grpc_request("/streamgate.v1.CacheService/Gone"))
            .await
            .unwrap();
        drop(res);
        metrics.breaker(
            "cache",
            "cache-1",
            Transition::Tripped {
                window_calls: 5,
                interval: std::time::Duration::from_secs(1),
            },
        );
        for _ in 0..3 {
            metrics.retried("cache");
        }
        metrics.retry_refused("cache");
        let text = metrics.render();
        for line in [
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Get",code="Ok"} 2"#,
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Fail",code="NotFound"} 1"#,
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Stream",code="Internal"} 1"#,
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Gone",code="Cancelled"} 1"#,
            r#"streamgate_in_flight{service="streamgate.v1.CacheService",method="Stream"} 0"#,
            r#"streamgate_requests_total{service="http",method="other",code="Ok"} 1"#,
            r#"streamgate_in_flight{service="streamgate.v1.CacheService",method="Get"} 0"#,
            r#"streamgate_breaker_state{target="cache",endpoint="cache-1"} 2"#,
            r#"streamgate_breaker_transitions_total{target="cache",endpoint="cache-1",to="open"} 1"#,
            r#"streamgate_retries_total{target="cache"} 3"#,
            r#"streamgate_retry_budget_exhausted_total{target="cache"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("streamgate_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn a_breaker_opening_and_recovering_is_on_metrics() {
        let metrics = Metrics::default();
        let (target, endpoint) = ("metadata", "metadata-10.0.0.5-9005");
        assert_eq!(metrics.breaker_state(target, endpoint), None);
        let tripped = Transition::Tripped {
            window_calls: 20,
            interval: std::time::Duration::from_secs(5),
        };
        let steps = [
            (tripped, 2),
            (Transition::Probing, 1),
            (
                Transition::Reopened {
                    interval: std::time::Duration::from_secs(10),
                },
                2,
            ),
            (Transition::Probing, 1),
            (Transition::Closed, 0),
        ];
        for (t, state) in steps {
            metrics.breaker(target, endpoint, t);
            assert_eq!(
                metrics.breaker_state(target, endpoint),
                Some(state),
                "{t:?}"
            );
        }
        let text = metrics.render();
        for line in [
            r#"streamgate_breaker_state{target="metadata",endpoint="metadata-10.0.0.5-9005"} 0"#,
            r#"streamgate_breaker_transitions_total{target="metadata",endpoint="metadata-10.0.0.5-9005",to="open"} 2"#,
            r#"streamgate_breaker_transitions_total{target="metadata",endpoint="metadata-10.0.0.5-9005",to="half_open"} 2"#,
            r#"streamgate_breaker_transitions_total{target="metadata",endpoint="metadata-10.0.0.5-9005",to="closed"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("instance="),
            "no label clashes with Prometheus's: {text}"
        );
    }

    /// The series a rule watches for an increase are there at 0 from the
    /// start (a series that appears at 1 is no increase to `increase()`).
    #[test]
    fn retries_per_service_and_the_queue_start_at_zero() {
        let metrics = Metrics::default();
        metrics.expect_targets(["worker", "streaming"]);
        let text = metrics.render();
        for line in [
            "streamgate_retries_total{target=\"worker\"} 0\n",
            "streamgate_retry_budget_exhausted_total{target=\"streaming\"} 0\n",
            "streamgate_job_queue_depth{state=\"queued\"} 0\n",
            "streamgate_job_queue_depth{state=\"leased\"} 0\n",
            "streamgate_job_queue_oldest_age_seconds 0.0\n",
            "streamgate_jobs_dead_lettered_total 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_job_queue_gauges_hold_the_last_count() {
        let metrics = Metrics::default();
        metrics.job_queue(7, 2, 1, std::time::Duration::from_millis(1_500));
        metrics.job_queue(4, 1, 0, std::time::Duration::ZERO);
        let text = metrics.render();
        for line in [
            "streamgate_job_queue_depth{state=\"queued\"} 4\n",
            "streamgate_job_queue_depth{state=\"leased\"} 1\n",
            "streamgate_job_queue_oldest_age_seconds 0.0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// The client side counts calls made apart from calls served, with the
    /// status the channel failed with, or the one the answer carries.
    #[tokio::test]
    async fn the_client_layer_counts_calls_made_by_status() {
        let metrics = Metrics::default();
        let svc = tower::service_fn(|req: Request<()>| async move {
            match req.uri().path() {
                "/streamgate.v1.MetadataService/GetVideo" => {
                    Ok(Response::new(grpc_body(&[b"video"], Some(0))))
                }
                "/streamgate.v1.MetadataService/Missing" => {
                    Ok(Response::new(grpc_body(&[], Some(5))))
                }
                "/streamgate.v1.CacheService/Get" => {
                    Err(tonic::Status::deadline_exceeded("the deadline passed"))
                }
                _ => Err(tonic::Status::unavailable("no instance")),
            }
        });
        let client = MetricsLayer::client(metrics.clone());
        for path in [
            "/streamgate.v1.MetadataService/GetVideo",
            "/streamgate.v1.MetadataService/GetVideo",
            "/streamgate.v1.MetadataService/Missing",
            "/streamgate.v1.CacheService/Get",
            "/streamgate.v1.WorkerService/GetJob",
        ] {
            match client.layer(svc).oneshot(grpc_request(path)).await {
                Ok(res) => {
                    http_body_util::BodyExt::collect(res.into_body())
                        .await
                        .unwrap();
                }
                Err(status) => assert_ne!(status.code(), tonic::Code::Ok),
            }
        }
        let text = metrics.render();
        for line in [
            r#"streamgate_client_requests_total{service="streamgate.v1.MetadataService",method="GetVideo",code="Ok"} 2"#,
            r#"streamgate_client_requests_total{service="streamgate.v1.MetadataService",method="Missing",code="NotFound"} 1"#,
            r#"streamgate_client_requests_total{service="streamgate.v1.CacheService",method="Get",code="DeadlineExceeded"} 1"#,
            r#"streamgate_client_requests_total{service="streamgate.v1.WorkerService",method="GetJob",code="Unavailable"} 1"#,
            r#"streamgate_client_in_flight{service="streamgate.v1.MetadataService",method="GetVideo"} 0"#,
            r#"streamgate_client_request_duration_seconds_count{service="streamgate.v1.CacheService",method="Get"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("streamgate_requests_total{"),
            "calls made are not calls served: {text}"
        );
    }

    /// Paths come from outside: past the bound, new ones share one label set.
    #[tokio::test]
    async fn distinct_paths_are_bounded() {
        let metrics = Metrics::default();
        let svc = tower::service_fn(|_req: Request<()>| async move {
            Ok::<_, Infallible>(Response::new(grpc_body(&[], Some(0))))
        });
        let layer = MetricsLayer::new(metrics.clone());
        let extra = 50;
        for n in 0..MAX_CALL_LABELS + extra {
            let path = format!("/svc{n}/Method");
            let res = layer.layer(svc).oneshot(grpc_request(path)).await.unwrap();
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap();
        }
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("streamgate_requests_total{"))
            .count();
        assert_eq!(series, MAX_CALL_LABELS + 1, "{text}");
        assert!(
            text.contains(&format!(
                r#"streamgate_requests_total{{service="http",method="other",code="Ok"}} {extra}"#
            )),
            "{text}"
        );
    }
}
