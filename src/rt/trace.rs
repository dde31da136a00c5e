//! The W3C trace context of the task at hand: set by the server trace layer
//! for a call's handler (or by an event consumer for an event's), read by
//! whatever starts work on the task's behalf (outgoing calls, published
//! events). `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
//! Also the call's request id (`x-request-id`), set by the request id
//! layer, which names the call in an error a client reads.

use std::future::Future;

use crate::rt;

/// The header's name.
pub const HEADER: &str = "traceparent";

tokio::task_local! {
    pub(crate) static CURRENT: TraceContext;
    pub(crate) static REQUEST_ID: http::HeaderValue;
}

/// A position in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The whole trace's id (never all zero).
    pub trace_id: u128,
    /// This span's id (never zero).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

fn nonzero_u64() -> u64 {
    loop {
        let v = rt::random_u64();
        if v != 0 {
            return v;
        }
    }
}

impl TraceContext {
    /// A new trace, sampled per [`sample_root`] (always, unless spans are
    /// exported with a ratio below 1).
    #[must_use]
    pub fn root() -> Self {
        let trace_id = (u128::from(nonzero_u64()) << 64) | u128::from(rt::random_u64());
        Self {
            trace_id,
            span_id: nonzero_u64(),
            flags: u8::from(sample_root()),
        }
    }

    /// A child span in the same trace.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    /// Parses a `traceparent` value; `None` unless well-formed (version 00,
    /// lowercase hex, ids not all zero).
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        // `00-` <32 hex> `-` <16 hex> `-` <2 hex>, read in place in one
        // pass (every call carries one).
        let value: &[u8; 55] = value.try_into().ok()?;
        if &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let ctx = Self {
            trace_id: u128::from(lower_hex(&value[3..19])?) << 64
                | u128::from(lower_hex(&value[19..35])?),
            span_id: lower_hex(&value[36..52])?,
            flags: u8::try_from(lower_hex(&value[53..])?).ok()?,
        };
        (ctx.trace_id != 0 && ctx.span_id != 0).then_some(ctx)
    }

    /// The `traceparent` value.
    #[must_use]
    pub fn header(&self) -> String {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        out[35] = b'-';
        out[52] = b'-';
        hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut out[3..35]).expect("32 digits");
        hex::encode_to_slice(self.span_id.to_be_bytes(), &mut out[36..52]).expect("16 digits");
        hex::encode_to_slice([self.flags], &mut out[53..]).expect("2 digits");
        String::from_utf8(out.to_vec()).expect("hex is ASCII")
    }

    /// The trace id as 32 lowercase hex digits (a request id's default).
    #[must_use]
    pub fn trace_hex(&self) -> String {
        let mut out = [0u8; 32];
        hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut out).expect("32 digits");
        String::from_utf8(out.to_vec()).expect("hex is ASCII")
    }
}

/// The value of up to 16 lowercase hex digits; `None` for anything else.
fn lower_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })
}

/// The ratio of new traces sampled, as `f64` bits; all ones: every trace,
/// without drawing randomness (no exporter: the simulator's seeds replay
/// as before).
static ROOT_SAMPLING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Samples new traces at `ratio` (0.0..=1.0; the sampled flag of
/// `traceparent`, which every span of a trace follows), or, with `None`,
/// every one without drawing randomness. Set by the span exporter
/// ([`crate::telemetry`]).
pub fn set_root_sampling(ratio: Option<f64>) {
    let bits = ratio.map_or(u64::MAX, |r| r.clamp(0.0, 1.0).to_bits());
    ROOT_SAMPLING.store(bits, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a new trace is sampled (see [`set_root_sampling`]).
#[must_use]
pub fn sample_root() -> bool {
    let bits = ROOT_SAMPLING.load(std::sync::atomic::Ordering::Relaxed);
    if bits == u64::MAX {
        return true;
    }
    let ratio = f64::from_bits(bits);
    if ratio >= 1.0 {
        return true;
    }
    // 53 random bits as a fraction in [0, 1).
    #[allow(clippy::cast_precision_loss)]
    let draw = (rt::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    draw < ratio
}

/// The trace context of the call being handled on this task, if any.
#[must_use]
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `fut` with `ctx` current (for work started outside a call, e.g. an
/// event handler continuing the event's trace).
pub fn in_context<F: Future>(
    ctx: TraceContext,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<TraceContext, F> {
    CURRENT.scope(ctx, fut)
}

/// `fut` with this task's trace context (if any) current for it: for work
/// a call hands to a task of its own, which task-local context does not
/// reach otherwise.
pub fn carry<F>(fut: F) -> futures::future::BoxFuture<'static, F::Output>
where
    F: Future + Send + 'static,
{
    use futures::FutureExt as _;
    match current() {
        Some(ctx) => in_context(ctx, fut).boxed(),
        None => fut.boxed(),
    }
}

/// The request id of the call being handled on this task: the one the
/// request id layer set, else (work outside a call's layers, e.g. an event
/// handler) the trace id, which a request id defaults to.
#[must_use]
pub fn request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|id| id.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
        .or_else(|| current().map(|c| c.trace_hex()))
}

/// Runs `fut` as the call named `id` (see [`request_id`]).
pub fn with_request_id<F: Future>(
    id: http::HeaderValue,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<http::HeaderValue, F> {
    REQUEST_ID.scope(id, fut)
}
