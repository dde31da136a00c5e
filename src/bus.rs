//! Event bus: one JSON envelope for every event, versioned subjects, and a
//! trait with in-memory (monolith), NATS and simulated backends.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::rt;

pub mod events;
pub mod memory;
#[cfg(not(madsim))]
pub mod nats;

/// Largest encoded event accepted by any backend.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// The 14 event types; each has its own subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// An upload was stored.
    FileUploaded,
    /// A transcode began.
    TranscodingStarted,
    /// A transcode produced its renditions.
    TranscodingCompleted,
    /// A transcode failed, with a reason.
    TranscodingFailed,
    /// A viewer started a stream.
    StreamingStarted,
    /// A viewer stopped a stream.
    StreamingStopped,
    /// A video record was created.
    MetadataCreated,
    /// A video record changed.
    MetadataUpdated,
    /// A video record was deleted.
    MetadataDeleted,
    /// A job entered the queue.
    JobSubmitted,
    /// A job finished.
    JobCompleted,
    /// A job failed (maybe for good).
    JobFailed,
    /// The monitor raised an alert.
    AlertTriggered,
    /// The monitor cleared an alert.
    AlertResolved,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 14] = [
        Self::FileUploaded,
        Self::TranscodingStarted,
        Self::TranscodingCompleted,
        Self::TranscodingFailed,
        Self::StreamingStarted,
        Self::StreamingStopped,
        Self::MetadataCreated,
        Self::MetadataUpdated,
        Self::MetadataDeleted,
        Self::JobSubmitted,
        Self::JobCompleted,
        Self::JobFailed,
        Self::AlertTriggered,
        Self::AlertResolved,
    ];

    /// The versioned subject the event is published on.
    #[must_use]
    pub fn subject(self) -> &'static str {
        match self {
            Self::FileUploaded => "streamgate.v1.file.uploaded",
            Self::TranscodingStarted => "streamgate.v1.transcoding.started",
            Self::TranscodingCompleted => "streamgate.v1.transcoding.completed",
            Self::TranscodingFailed => "streamgate.v1.transcoding.failed",
            Self::StreamingStarted => "streamgate.v1.streaming.started",
            Self::StreamingStopped => "streamgate.v1.streaming.stopped",
            Self::MetadataCreated => "streamgate.v1.metadata.created",
            Self::MetadataUpdated => "streamgate.v1.metadata.updated",
            Self::MetadataDeleted => "streamgate.v1.metadata.deleted",
            Self::JobSubmitted => "streamgate.v1.job.submitted",
            Self::JobCompleted => "streamgate.v1.job.completed",
            Self::JobFailed => "streamgate.v1.job.failed",
            Self::AlertTriggered => "streamgate.v1.alert.triggered",
            Self::AlertResolved => "streamgate.v1.alert.resolved",
        }
    }
}

/// The envelope every event travels in (JSON on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; consumers deduplicate by it.
    pub id: String,
    /// Which of the 14 types; decides the subject and the payload's shape.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The publishing service.
    pub source: String,
    /// When it was published, Unix epoch milliseconds.
    pub time: u64,
    /// W3C `traceparent` of the publishing span, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// The type's payload.
    pub data: serde_json::Value,
}

impl Event {
    /// A new event with a fresh id, the runtime's current time and, inside a
    /// call, a child of the call's trace context.
    #[must_use]
    pub fn new(kind: EventType, source: &str, data: serde_json::Value) -> Self {
        Self {
            id: rt::random_hex128(),
            kind,
            source: source.to_owned(),
            time: rt::unix_ms(),
            trace: crate::rt::trace::current().map(|ctx| ctx.child().header()),
            data,
        }
    }

    /// Encodes the envelope as JSON.
    ///
    /// # Errors
    /// [`BusError::TooLarge`] past [`MAX_EVENT_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, BusError> {
        let bytes = serde_json::to_vec(self).map_err(|e| BusError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(BusError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes an envelope.
    ///
    /// # Errors
    /// [`BusError::TooLarge`] or [`BusError::Malformed`] (unknown type included).
    pub fn decode(bytes: &[u8]) -> Result<Self, BusError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(BusError::TooLarge(bytes.len()));
        }
        serde_json::from_slice(bytes).map_err(|e| BusError::Malformed(e.to_string()))
    }
}

/// A bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus is closed or disconnected beyond its buffer.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// The bus was closed.
    #[error("event bus closed")]
    Closed,
    /// An encoded event exceeds [`MAX_EVENT_BYTES`].
    #[error("event of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Bytes that are not a valid envelope.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// A name that is not a valid subject or queue group.
    #[error("invalid subject or group: {0:?}")]
    InvalidName(String),
}

/// What a handler returns; an error is counted and logged, never fatal.
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// An event handler.
pub type Handler = Arc<dyn Fn(Event) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Wraps an async closure as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}

/// A live subscription; dropping it (or [`Subscription::unsubscribe`]) ends it.
#[derive(Debug)]
pub struct Subscription {
    task: Option<rt::JoinHandle<()>>,
}

impl Subscription {
    /// A subscription driven by `task`.
    #[must_use]
    pub fn new(task: rt::JoinHandle<()>) -> Self {
        Self { task: Some(task) }
    }

    /// Stops delivery.
    pub fn unsubscribe(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The event bus contract.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `event` on its type's subject.
    async fn publish(&self, event: &Event) -> Result<(), BusError>;
    /// Delivers every event on `subject` to `handler`; with a `queue_group`,
    /// each event goes to one member of the group only.
    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError>;
    /// Flushes and closes; later publishes fail with [`BusError::Closed`].
    async fn close(&self);
    /// Whether the bus can carry events now (readiness,
    /// [`crate::readiness`]): connected to its server where it has one. An
    /// in-process bus always can.
    async fn health(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Runs `handler` on `event`, turning an error or a panic into a log line,
/// so that one bad event never ends a subscription. Returns whether it succeeded.
pub async fn dispatch(handler: &Handler, event: Event) -> bool {
    use futures::FutureExt as _;
    let (id, kind) = (event.id.clone(), event.kind);
    match std::panic::AssertUnwindSafe(handler(event))
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(event_id = %id, ?kind, error = %e, "event handler failed");
            false
        }
        Err(_) => {
            tracing::error!(event_id = %id, ?kind, "event handler panicked");
            false
        }
    }
}

/// Whether `name` is a valid subject or queue group: 1..=256 bytes of
/// `[A-Za-z0-9._-]`, no empty tokens.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.split('.').all(|t| !t.is_empty())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Refuses an invalid subject or queue group (see [`valid_name`]).
///
/// # Errors
/// [`BusError::InvalidName`] naming the offending one.
pub fn check_subscription(subject: &str, queue_group: Option<&str>) -> Result<(), BusError> {
    if !valid_name(subject) {
        return Err(BusError::InvalidName(subject.to_owned()));
    }
    if let Some(group) = queue_group.filter(|g| !valid_name(g)) {
        return Err(BusError::InvalidName(group.to_owned()));
    }
    Ok(())
}
