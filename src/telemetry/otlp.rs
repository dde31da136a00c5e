//! The OTLP/gRPC exporter of [`super`]'s spans: `opentelemetry-otlp`'s
//! tonic exporter behind `opentelemetry_sdk`'s batch span processor (its
//! queue, batch size and delays from the standard `OTEL_BSP_*` variables;
//! the endpoint, headers and timeout from `OTEL_EXPORTER_OTLP_*` unless
//! `--otlp-endpoint` names the endpoint). Not in the simulation build.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor as _};

use super::{Finished, Kind, Sink, Value};

/// Where and how much to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/gRPC endpoint (e.g. `http://127.0.0.1:4317`);
    /// `None`: the exporter reads `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`.
    pub endpoint: Option<String>,
    /// The ratio of new traces sampled (0.0..=1.0).
    pub ratio: f64,
    /// `service.name` of the process's resource, unless
    /// `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
}

/// Whether to export, and how, from `--otlp-endpoint` / `--trace-sample-ratio`
/// (`endpoint`, `ratio`) and the standard variables (read through `env`):
/// export when an endpoint is named either way, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`; the ratio from
/// `--trace-sample-ratio`, else `OTEL_TRACES_SAMPLER` (`always_on`,
/// `always_off`, `traceidratio` and their `parentbased_` forms, which is
/// what every one of them is here) with `OTEL_TRACES_SAMPLER_ARG`, else 1.
///
/// # Errors
/// A sampler or ratio that makes no sense, named.
pub fn settings(
    endpoint: Option<&str>,
    ratio: Option<f64>,
    service_name: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let named = endpoint.is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !named {
        return Ok(None);
    }
    let ratio = match ratio {
        Some(r) => r,
        None => sampler_ratio(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?,
    };
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!("trace sample ratio {ratio}: expected 0.0..=1.0"));
    }
    Ok(Some(Settings {
        endpoint: endpoint.map(str::to_owned),
        ratio,
        service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned()),
    }))
}

fn sampler_ratio(sampler: Option<String>, arg: Option<String>) -> Result<f64, String> {
    let Some(sampler) = sampler else {
        return Ok(1.0);
    };
    let name = sampler.trim().to_ascii_lowercase();
    match name.strip_prefix("parentbased_").unwrap_or(&name) {
        "always_on" => Ok(1.0),
        "always_off" => Ok(0.0),
        "traceidratio" => arg.map_or(Ok(1.0), |a| {
            a.trim()
                .parse::<f64>()
                .map_err(|e| format!("OTEL_TRACES_SAMPLER_ARG {a:?}: {e}"))
        }),
        _ => Err(format!(
            "OTEL_TRACES_SAMPLER {sampler:?}: expected always_on, always_off, traceidratio \
             or their parentbased_ forms"
        )),
    }
}

/// A running exporter; [`Exporter::shutdown`] sends what is queued.
#[derive(Debug, Clone)]
pub struct Exporter {
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
    /// Spans queued at most (the batch processor's queue size): past it a
    /// span is dropped and counted.
    capacity: u64,
}

/// The batch processor's queue size when `OTEL_BSP_MAX_QUEUE_SIZE` does not
/// say (the SDK's default).
pub const QUEUE_SIZE: usize = 2048;

/// The OTLP exporter, counting what it sent and what it lost
/// ([`super::counts`]).
#[derive(Debug)]
struct Counted<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for Counted<E>
{
    async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.0.export(batch).await;
        super::dequeue(spans, result.is_ok());
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Longest a shutdown waits for the last spans to go out.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

impl Exporter {
    /// Starts exporting per `settings`. Call inside a Tokio runtime (the
    /// tonic channel needs one); connects lazily, so a collector that is
    /// not up yet is no reason to fail.
    ///
    /// # Errors
    /// The exporter could not be built (e.g. an endpoint that is not a URI).
    pub fn start(settings: &Settings) -> Result<Self, String> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let exporter = builder.build().map_err(|e| format!("OTLP exporter: {e}"))?;
        let capacity = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(QUEUE_SIZE);
        let config = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build();
        let mut processor = BatchSpanProcessor::builder(Counted(exporter))
            .with_batch_config(config)
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
        Ok(Self {
            processor: Arc::new(processor),
            scope: InstrumentationScope::builder("streamgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            capacity: capacity as u64,
        })
    }

    /// Sends what is queued, for at most [`SHUTDOWN_TIMEOUT`].
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OTLP exporter: shutdown");
        }
    }

    /// The span as the SDK's exporters take it.
    fn data(&self, span: Finished) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_bytes(span.context.trace_id.to_be_bytes()),
            SpanId::from_bytes(span.context.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let parent = span
            .parent
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_be_bytes()));
        SpanData {
            span_context: context,
            parent_span_id: parent,
            parent_span_is_remote: span.remote_parent,
            span_kind: match span.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
                Kind::Producer => SpanKind::Producer,
                Kind::Consumer => SpanKind::Consumer,
                Kind::Internal => SpanKind::Internal,
            },
            name: span.name,
            start_time: at(span.start),
            end_time: at(span.end),
            attributes: span
                .attributes
                .into_iter()
                .map(|(key, value)| match value {
                    Value::Str(s) => KeyValue::new(key, s),
                    Value::Int(n) => KeyValue::new(key, n),
                })
                .collect(),
            dropped_attributes_count: 0,
            events: opentelemetry_sdk::trace::SpanEvents::default(),
            links: opentelemetry_sdk::trace::SpanLinks::default(),
            status: match span.error {
                Some(why) => Status::error(why),
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// `nanos` after the Unix epoch, as the SDK's span data holds it (the
/// times themselves came from the runtime's clock, `rt::unix_nanos`).
#[allow(clippy::disallowed_types)]
fn at(nanos: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(nanos)
}

impl Sink for Exporter {
    fn record(&self, span: Finished) {
        // Queues, or when the queue is full drops (counted), never blocks.
        if super::enqueue(self.capacity) {
            self.processor.on_end(self.data(span));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn exports_only_when_an_endpoint_is_named_and_not_disabled() {
        assert_eq!(settings(None, None, "s", env(&[])), Ok(None));
        let on = settings(Some("http://c:4317"), None, "upload", env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(on.ratio, 1.0);
        assert_eq!(on.service_name, "upload");
        let by_env = settings(
            None,
            None,
            "upload",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(by_env.endpoint, None, "the exporter reads the variable");
        assert_eq!(by_env.service_name, "edge");
        assert_eq!(by_env.ratio, 0.01);
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                settings(Some("http://c:4317"), None, "s", env(&[off])),
                Ok(None)
            );
        }
        let flag_wins = settings(
            Some("http://c:4317"),
            Some(0.5),
            "s",
            env(&[("OTEL_TRACES_SAMPLER", "always_off")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(flag_wins.ratio, 0.5);
    }

    #[test]
    fn bad_samplers_and_ratios_are_named() {
        let e = settings(
            Some("http://c:4317"),
            None,
            "s",
            env(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]),
        )
        .unwrap_err();
        assert!(e.contains("jaeger_remote"), "{e}");
        let e = settings(Some("http://c:4317"), Some(1.5), "s", env(&[])).unwrap_err();
        assert!(e.contains("1.5"), "{e}");
        let e = settings(
            Some("http://c:4317"),
            None,
            "s",
            env(&[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "lots"),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("lots"), "{e}");
        assert_eq!(
            settings(
                Some("http://c:4317"),
                None,
                "s",
                env(&[("OTEL_TRACES_SAMPLER", "always_off")])
            )
            .unwrap()
            .unwrap()
            .ratio,
            0.0
        );
    }
}
