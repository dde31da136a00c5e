//! Spans for OpenTelemetry: the layers and the bus record what they already
//! know (the W3C trace context of [`crate::rt::trace`], the call's name,
//! its status, start and end) as finished spans, and a process that was
//! given an OTLP endpoint (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) exports them over OTLP/gRPC ([`otlp`],
//! the `opentelemetry-otlp` crate's exporter behind the SDK's batch span
//! processor: a bounded queue on a thread of its own, so exporting never
//! blocks a call; a full queue drops spans, counted on `/metrics`).
//!
//! Span ids are the ones the trace context already carries (the
//! `traceparent` a caller sent is the client span's id, so the server span
//! names it as parent), which is why spans are built here rather than
//! through a tracer that would draw ids of its own. Sampling is parent
//! based: a new trace is sampled with the configured ratio (the sampled
//! flag of `traceparent`), and every span of a trace follows its root.
//!
//! Without an exporter (the default, and always in the simulator) nothing
//! is recorded and no randomness is drawn for sampling, so trace ids stay
//! what the simulator's seed makes them.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::rt;
use crate::rt::trace::TraceContext;

#[cfg(not(madsim))]
pub mod otlp;

/// What a span stands for (OpenTelemetry's span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A call served.
    Server,
    /// A call made.
    Client,
    /// An event published.
    Producer,
    /// An event handled.
    Consumer,
    /// Work inside a process (a job attempt).
    Internal,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A whole number.
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Self::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

/// A finished span, as handed to the exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Its trace and its own id.
    pub context: TraceContext,
    /// The span it is a child of, if any.
    pub parent: Option<u64>,
    /// Whether the parent is in another process (came in a header or an
    /// event).
    pub remote_parent: bool,
    /// What it stands for.
    pub kind: Kind,
    /// Its name: a gRPC method (`streamgate.v1.UploadService/Upload`), an
    /// HTTP route template (`POST /v1/videos`), an event (`publish
    /// FileUploaded`): never a raw path, so names stay few.
    pub name: Cow<'static, str>,
    /// When it started, nanoseconds since the Unix epoch.
    pub start: u64,
    /// When it ended, nanoseconds since the Unix epoch.
    pub end: u64,
    /// Attributes (OpenTelemetry's semantic conventions where they exist).
    pub attributes: Vec<(&'static str, Value)>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A sampling ratio, 0.0..=1.0 (what `--trace-sample-ratio` takes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(f64);

// Never NaN: parsing refuses anything outside 0.0..=1.0.
impl Eq for Ratio {}

impl Ratio {
    /// The ratio as a number.
    #[must_use]
    pub fn get(self) -> f64 {
        self.0
    }
}

impl std::str::FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ratio: f64 = s
            .trim()
            .parse()
            .map_err(|e| format!("{s:?} is not a number: {e}"))?;
        if (0.0..=1.0).contains(&ratio) {
            Ok(Self(ratio))
        } else {
            Err(format!("{s:?}: expected a ratio in 0.0..=1.0"))
        }
    }
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Spans handed to the exporter and not yet through it (queued or being
/// sent), spans it sent, and spans dropped (the queue was full, or the
/// collector refused or could not be reached).
static QUEUED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans exported and spans dropped so far by this process (what
/// `/metrics` shows as `streamgate_spans_exported_total` and
/// `streamgate_spans_dropped_total`).
#[must_use]
pub fn counts() -> (u64, u64) {
    (
        EXPORTED.load(Ordering::Relaxed),
        DROPPED.load(Ordering::Relaxed),
    )
}

/// For an exporter: takes a place in a queue of `capacity` spans, or
/// counts the span dropped (false) when the queue is full.
#[must_use]
pub fn enqueue(capacity: u64) -> bool {
    let taken = QUEUED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
        (queued < capacity).then_some(queued + 1)
    });
    if taken.is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    taken.is_ok()
}

/// For an exporter: `spans` left the queue, sent (`sent`) or lost.
pub fn dequeue(spans: u64, sent: bool) {
    let _ = QUEUED.fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
        Some(queued.saturating_sub(spans))
    });
    let counter = if sent { &EXPORTED } else { &DROPPED };
    counter.fetch_add(spans, Ordering::Relaxed);
}

/// Where finished spans go.
pub trait Sink: Send + Sync + 'static {
    /// Takes a finished span; must not block.
    fn record(&self, span: Finished);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();

/// Whether spans go to the sink (see [`pause`]).
static ON: AtomicBool = AtomicBool::new(false);

/// Sends the process's spans to `sink` from now on, new traces sampled at
/// `ratio` (0.0..=1.0). Once per process: a second call is refused.
///
/// # Errors
/// A sink was installed already.
pub fn install(sink: Box<dyn Sink>, ratio: f64) -> Result<(), &'static str> {
    SINK.set(sink)
        .map_err(|_| "an OpenTelemetry exporter is installed already")?;
    rt::trace::set_root_sampling(Some(ratio));
    ON.store(true, Ordering::Release);
    Ok(())
}

/// Stops (`true`) or resumes handing spans to the installed sink, and sets
/// the ratio of new traces sampled: what a benchmark switches between
/// rounds to compare export off and on in one process.
pub fn pause(paused: bool, ratio: f64) {
    let on = !paused && SINK.get().is_some();
    rt::trace::set_root_sampling(on.then_some(ratio));
    ON.store(on, Ordering::Release);
}

/// Whether spans are being exported.
#[must_use]
pub fn enabled() -> bool {
    ON.load(Ordering::Acquire)
}

/// A span being timed; [`Span::end`] hands it to the exporter. `None` from
/// [`Span::start`] when nothing would be exported (no exporter, or a trace
/// not sampled), so an unexported span costs one check.
#[derive(Debug)]
pub struct Span(Finished);

impl Span {
    /// Starts a span with its own `context`, a child of `parent`, named by
    /// `name` (called only when the span is exported: an unexported span
    /// allocates nothing).
    #[must_use]
    pub fn start<N: Into<Cow<'static, str>>>(
        kind: Kind,
        name: impl FnOnce() -> N,
        context: TraceContext,
        parent: Option<u64>,
        remote_parent: bool,
    ) -> Option<Self> {
        if !enabled() || context.flags & 1 == 0 {
            return None;
        }
        let now = rt::unix_nanos();
        Some(Self(Finished {
            context,
            parent,
            remote_parent,
            kind,
            name: name().into(),
            start: now,
            end: now,
            attributes: Vec::new(),
            error: None,
        }))
    }

    /// Adds an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.0.attributes.push((key, value.into()));
    }

    /// Renames the span (once the name is known, e.g. a route template).
    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        self.0.name = name.into();
    }

    /// Marks it failed.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.0.error = Some(why.into());
    }

    /// Ends it now and hands it to the exporter.
    pub fn end(mut self) {
        self.0.end = rt::unix_nanos();
        if let Some(sink) = SINK.get() {
            sink.record(self.0);
        }
    }
}

/// The context of a span that is a child of `parent` and named by `key`
/// (an event's id for its consumer span, a job's id and attempt for the
/// attempt's span): same trace, its span id derived from `key` and the
/// parent's (no randomness drawn, so the simulator's seeds replay as
/// before; the same event handled twice is the same span).
#[must_use]
pub fn derived_context(parent: TraceContext, key: &str) -> TraceContext {
    // FNV-1a over the key and the parent's span id.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain(parent.span_id.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    TraceContext {
        span_id: hash.max(1),
        ..parent
    }
}

/// `streamgate.v1.UploadService/Upload` of the gRPC path
/// `/streamgate.v1.UploadService/Upload`, or `None` for another path.
#[must_use]
pub fn grpc_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(
            grpc_method("/streamgate.v1.UploadService/Upload"),
            Some(("streamgate.v1.UploadService", "Upload"))
        );
        for other in ["/v1/videos/abc/hls/x.ts", "/health", "/", "", "//x"] {
            assert_eq!(grpc_method(other), None, "{other}");
        }
    }

    #[test]
    fn ratios_outside_zero_to_one_are_refused() {
        assert_eq!("0.01".parse::<Ratio>().map(Ratio::get), Ok(0.01));
        assert_eq!("1".parse::<Ratio>().map(Ratio::get), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "lots", ""] {
            assert!(bad.parse::<Ratio>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_consumer_span_stays_in_its_trace_with_a_stable_id() {
        let producer = TraceContext {
            trace_id: 7,
            span_id: 9,
            flags: 1,
        };
        let a = derived_context(producer, "e1");
        assert_eq!(a.trace_id, 7);
        assert_eq!(a.flags, 1);
        assert_ne!(a.span_id, producer.span_id);
        assert_eq!(a, derived_context(producer, "e1"));
        assert_ne!(a.span_id, derived_context(producer, "e2").span_id);
    }
}
