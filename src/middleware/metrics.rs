//! Metrics: a per-node Prometheus registry served as text on `/metrics`, and
//! the server layer that counts requests by service, method and status,
//! times them, and tracks calls in flight. The pool's breaker states and the
//! retriers' counters are registered here too.

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

use crate::resilience::breaker::Transition;
use crate::rt::{self, Instant};

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

/// An instance's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The instance id.
    pub instance: String,
}

/// Distinct call label sets (service, method) kept; calls on further paths
/// (only a misbehaving client sends many) count under `http`/`other`.
pub const MAX_CALL_LABELS: usize = 256;

/// What a call on one path updates, looked up once per call (no label
/// strings built on the way).
struct CallMetrics {
    labels: CallLabels,
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

struct Inner {
    registry: Registry,
    /// Per request path, at most [`MAX_CALL_LABELS`].
    calls: std::collections::HashMap<String, Arc<CallMetrics>>,
    requests: Family<DoneLabels, Counter>,
    latency: Family<CallLabels, Histogram>,
    in_flight: Family<CallLabels, Gauge>,
    breaker_state: Family<InstanceLabels, Gauge>,
    breaker_transitions: Family<InstanceLabels, Counter>,
    retries: Counter,
    budget_exhausted: Counter,
    cache_reads: Family<CacheReadLabels, Counter>,
    orphans_removed: Family<OrphanLabels, Counter>,
    orphan_sweeps: Counter,
}

/// The node's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("streamgate");
        let requests = Family::<DoneLabels, Counter>::default();
        let latency = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        let in_flight = Family::<CallLabels, Gauge>::default();
        let breaker_state = Family::<InstanceLabels, Gauge>::default();
        let breaker_transitions = Family::<InstanceLabels, Counter>::default();
        let (retries, budget_exhausted) = (Counter::default(), Counter::default());
        let cache_reads = Family::<CacheReadLabels, Counter>::default();
        let orphans_removed = Family::<OrphanLabels, Counter>::default();
        let orphan_sweeps = Counter::default();
        registry.register("requests", "Calls served, by status", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to the response head",
            latency.clone(),
        );
        registry.register("in_flight", "Calls being served", in_flight.clone());
        registry.register(
            "breaker_state",
            "Client breaker per instance: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Client breaker transitions per instance",
            breaker_transitions.clone(),
        );
        registry.register("retries", "Retries made by clients", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget",
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
        let inner = Inner {
            registry,
            calls: std::collections::HashMap::new(),
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
            inner: Arc::new(Mutex::new(inner)),
        }
    }
}

fn split_path(path: &str) -> (String, String) {
    match path.trim_start_matches('/').split_once('/') {
        Some((service, method)) if !service.is_empty() && !method.contains('/') => {
            (service.to_owned(), method.to_owned())
        }
        // Plain HTTP paths are few and fixed (`/health`, `/metrics`); others fold into one label.
        _ if matches!(path, "/health" | "/metrics") => ("http".to_owned(), path.to_owned()),
        _ => ("http".to_owned(), "other".to_owned()),
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self
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

    /// Records a breaker transition of `instance` (the pool's hook).
    pub fn breaker(&self, instance: &str, t: Transition) {
        let state = match t {
            Transition::Closed => 0,
            Transition::Probing => 1,
            Transition::Tripped { .. } | Transition::Reopened { .. } => 2,
        };
        let labels = InstanceLabels {
            instance: instance.to_owned(),
        };
        self.with(|i| {
            i.breaker_state.get_or_create(&labels).set(state);
            i.breaker_transitions.get_or_create(&labels).inc();
        });
    }

    /// Adds a retrier's counts since the last call (`retries`, `exhausted`).
    pub fn add_retries(&self, retries: u64, exhausted: u64) {
        self.with(|i| {
            i.retries.inc_by(retries);
            i.budget_exhausted.inc_by(exhausted);
        });
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

    /// The handles of calls on `path` (made on its first call).
    fn call(&self, path: &str) -> Arc<CallMetrics> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(call) = inner.calls.get(path) {
            return call.clone();
        }
        let (service, method) = if inner.calls.len() < MAX_CALL_LABELS {
            split_path(path)
        } else {
            ("http".to_owned(), "other".to_owned())
        };
        let labels = CallLabels { service, method };
        let call = Arc::new(CallMetrics {
            in_flight: inner.in_flight.get_or_create_owned(&labels),
            latency: inner.latency.get_or_create_owned(&labels),
            requests: inner.requests.clone(),
            by_code: Default::default(),
            labels,
        });
        if inner.calls.len() < MAX_CALL_LABELS {
            inner.calls.insert(path.to_owned(), call.clone());
        }
        call
    }
}

/// Server side: records every call in [`Metrics`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// Records into `metrics`.
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Measure<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measure {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResBody> Service<Request<B>> for Measure<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let call = self.metrics.call(req.uri().path());
        call.in_flight.inc();
        ResponseFuture {
            inner: self.inner.call(req),
            done: Some((call, rt::now())),
        }
    }
}

pin_project_lite::pin_project! {
    /// Records the call when the response head is ready (or on drop).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        done: Option<(Arc<CallMetrics>, Instant)>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((call, started)) = this.project().done.take() {
                finish(&call, tonic::Code::Cancelled, started);
            }
        }
    }
}

/// Records a finished call.
fn finish(call: &CallMetrics, code: tonic::Code, started: Instant) {
    call.in_flight.dec();
    call.latency.observe((rt::now() - started).as_secs_f64());
    call.done(code);
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some((call, started)) = this.done.take() {
            // Unary errors come trailers-only, so their status is in the head;
            // a status sent later in trailers counts as OK here.
            let code = match &result {
                Ok(res) => tonic::Status::from_header_map(res.headers())
                    .map_or(tonic::Code::Ok, |s| s.code()),
                Err(_) => tonic::Code::Internal,
            };
            finish(&call, code, started);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn counts_calls_by_status_and_renders_prometheus_text() {
        let metrics = Metrics::default();
        let svc = tower::service_fn(|req: Request<()>| async move {
            if req.uri().path().ends_with("/Fail") {
                let (parts, ()) = tonic::Status::not_found("no")
                    .into_http::<()>()
                    .into_parts();
                return Ok::<_, Infallible>(Response::from_parts(parts, ()));
            }
            Ok(Response::new(()))
        });
        let layer = MetricsLayer::new(metrics.clone());
        for path in [
            "/streamgate.v1.CacheService/Get",
            "/streamgate.v1.CacheService/Get",
            "/streamgate.v1.CacheService/Fail",
            "/../../etc",
        ] {
            layer
                .layer(svc)
                .oneshot(Request::builder().uri(path).body(()).unwrap())
                .await
                .unwrap();
        }
        metrics.breaker(
            "cache-1",
            Transition::Tripped {
                window_calls: 5,
                interval: std::time::Duration::from_secs(1),
            },
        );
        metrics.add_retries(3, 1);
        let text = metrics.render();
        for line in [
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Get",code="Ok"} 2"#,
            r#"streamgate_requests_total{service="streamgate.v1.CacheService",method="Fail",code="NotFound"} 1"#,
            r#"streamgate_requests_total{service="http",method="other",code="Ok"} 1"#,
            r#"streamgate_in_flight{service="streamgate.v1.CacheService",method="Get"} 0"#,
            r#"streamgate_breaker_state{instance="cache-1"} 2"#,
            "streamgate_retries_total 3",
            "streamgate_retry_budget_exhausted_total 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.contains("streamgate_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    /// Paths come from outside: past the bound, new ones share one label set.
    #[tokio::test]
    async fn distinct_paths_are_bounded() {
        let metrics = Metrics::default();
        let svc =
            tower::service_fn(
                |_req: Request<()>| async move { Ok::<_, Infallible>(Response::new(())) },
            );
        let layer = MetricsLayer::new(metrics.clone());
        let extra = 50;
        for n in 0..MAX_CALL_LABELS + extra {
            let path = format!("/svc{n}/Method");
            layer
                .layer(svc)
                .oneshot(Request::builder().uri(path).body(()).unwrap())
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
