//! An [`EventBus`] that counts what goes through another: publishes by
//! event type and outcome, deliveries to this process's handlers, and the
//! handler runs that failed (an error or a panic)
//! (`streamgate_bus_publishes_total`, `streamgate_bus_deliveries_total`,
//! `streamgate_bus_handler_failures_total`). The kernel wraps every node's
//! bus in one, so each backend is counted the same way. The event type
//! label is one of the fourteen subjects without its `streamgate.v1.`
//! prefix (`file.uploaded`, ...): bounded.

use std::sync::Arc;

use async_trait::async_trait;

use super::metrics::Metrics;
use crate::bus::{BusError, Event, EventBus, EventType, Handler, Subscription};

/// The label of `kind`: its subject without the version prefix.
#[must_use]
pub fn event_label(kind: EventType) -> &'static str {
    let subject = kind.subject();
    subject.strip_prefix("streamgate.v1.").unwrap_or(subject)
}

/// The trace context a handler of `event` runs in (a consumer span, child
/// of the publishing span, with an id drawn from the event's, see
/// [`crate::telemetry::derived_context`]) and that span when spans are
/// exported; nothing for an event that carries no trace.
fn consumer_span(
    event: &Event,
    group: Option<&str>,
    subscription: u64,
) -> (
    Option<crate::rt::trace::TraceContext>,
    Option<crate::telemetry::Span>,
) {
    let Some(producer) = event
        .trace
        .as_deref()
        .and_then(|t| crate::rt::trace::TraceContext::parse(t.as_bytes()))
    else {
        return (None, None);
    };
    let context =
        crate::telemetry::derived_context(producer, &format!("{}#{subscription}", event.id));
    let mut span = crate::telemetry::Span::start(
        crate::telemetry::Kind::Consumer,
        || format!("process {}", event.kind.subject()),
        context,
        Some(producer.span_id),
        true,
    );
    if let Some(span) = &mut span {
        span.set("messaging.operation.type", "process");
        span.set("messaging.destination.name", event.kind.subject());
        span.set("messaging.message.id", event.id.clone());
        if let Some(group) = group {
            span.set("messaging.consumer.group.name", group.to_owned());
        }
    }
    (Some(context), span)
}

/// Counts the traffic of an inner bus into [`Metrics`].
pub struct MeteredBus {
    inner: Arc<dyn EventBus>,
    metrics: Metrics,
    /// Subscriptions made so far.
    subscriptions: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MeteredBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBus").finish_non_exhaustive()
    }
}

impl MeteredBus {
    /// `inner`, counted into `metrics`.
    #[must_use]
    pub fn new(inner: Arc<dyn EventBus>, metrics: Metrics) -> Self {
        Self {
            inner,
            metrics,
            subscriptions: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl EventBus for MeteredBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        // The producer span: the context the event carries, a child of the
        // span that made the event.
        let mut span = event
            .trace
            .as_deref()
            .and_then(|t| crate::rt::trace::TraceContext::parse(t.as_bytes()))
            .and_then(|context| {
                crate::telemetry::Span::start(
                    crate::telemetry::Kind::Producer,
                    || format!("publish {}", event.kind.subject()),
                    context,
                    crate::rt::trace::current().map(|c| c.span_id),
                    false,
                )
            });
        if let Some(span) = &mut span {
            span.set("messaging.operation.type", "publish");
            span.set("messaging.destination.name", event.kind.subject());
            span.set("messaging.message.id", event.id.clone());
        }
        let result = self.inner.publish(event).await;
        if let Some(mut span) = span {
            if let Err(e) = &result {
                span.fail(e.to_string());
            }
            span.end();
        }
        self.metrics
            .bus_published(event_label(event.kind), result.is_ok());
        result
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        let metrics = self.metrics.clone();
        let group: Option<Arc<str>> = queue_group.map(Arc::from);
        // Names this subscription in its consumer spans' ids: two handlers
        // of one event are two spans.
        let subscription = self
            .subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counted: Handler = Arc::new(move |event: Event| {
            let (handler, metrics, group) = (handler.clone(), metrics.clone(), group.clone());
            Box::pin(async move {
                use futures::FutureExt as _;
                let label = event_label(event.kind);
                metrics.bus_lag(label, event.time);
                let (context, span) = consumer_span(&event, group.as_deref(), subscription);
                let handled = handler(event);
                // Inside the event's trace: the calls the handler makes and
                // the events it publishes continue it.
                let handled = match context {
                    Some(context) => crate::rt::trace::in_context(context, handled).boxed(),
                    None => handled,
                };
                // A panic is counted, then passed on to `dispatch`, which
                // logs it and keeps the subscription.
                let outcome = std::panic::AssertUnwindSafe(handled).catch_unwind().await;
                if let Some(mut span) = span {
                    if !matches!(outcome, Ok(Ok(()))) {
                        span.fail("the event handler failed");
                    }
                    span.end();
                }
                match outcome {
                    Ok(result) => {
                        metrics.bus_delivered(label, result.is_ok());
                        result
                    }
                    Err(panic) => {
                        metrics.bus_delivered(label, false);
                        std::panic::resume_unwind(panic)
                    }
                }
            })
        });
        self.inner.subscribe(subject, queue_group, counted).await
    }

    async fn health(&self) -> Result<(), BusError> {
        self.inner.health().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::bus::handler;
    use crate::bus::memory::MemoryBus;

    fn event(kind: EventType) -> Event {
        Event::new(kind, "test", serde_json::json!({}))
    }

    #[tokio::test]
    async fn publishes_deliveries_and_failures_are_counted_by_event_type() {
        let metrics = Metrics::default();
        let bus = MeteredBus::new(Arc::new(MemoryBus::new()), metrics.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _sub = bus
            .subscribe(
                EventType::JobFailed.subject(),
                None,
                handler(move |event: Event| {
                    let tx = tx.clone();
                    async move {
                        let fail = event.source == "bad";
                        let _ = tx.send(());
                        if fail { Err("refused".into()) } else { Ok(()) }
                    }
                }),
            )
            .await
            .expect("subscribed");
        for source in ["good", "bad", "good"] {
            let mut e = event(EventType::JobFailed);
            e.source = source.to_owned();
            bus.publish(&e).await.expect("published");
        }
        bus.publish(&event(EventType::FileUploaded))
            .await
            .expect("published with no subscriber");
        for _ in 0..3 {
            rx.recv().await.expect("delivered");
        }
        // The count follows the handler's end; give it the moment.
        let mut text = String::new();
        for _ in 0..100 {
            text = metrics.render();
            if text.contains("streamgate_bus_deliveries_total{event_type=\"job.failed\"} 3\n") {
                break;
            }
            tokio::task::yield_now().await;
        }
        for line in [
            "streamgate_bus_publishes_total{event_type=\"job.failed\",outcome=\"ok\"} 3\n",
            "streamgate_bus_publishes_total{event_type=\"file.uploaded\",outcome=\"ok\"} 1\n",
            "streamgate_bus_deliveries_total{event_type=\"job.failed\"} 3\n",
            "streamgate_bus_handler_failures_total{event_type=\"job.failed\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("streamgate_bus_deliveries_total{event_type=\"file.uploaded\""),
            "no one subscribed to uploads: {text}"
        );

        bus.close().await;
        assert!(bus.publish(&event(EventType::JobFailed)).await.is_err());
        assert!(metrics.render().contains(
            "streamgate_bus_publishes_total{event_type=\"job.failed\",outcome=\"error\"} 1\n"
        ));
    }

    #[test]
    fn event_labels_are_short_and_distinct() {
        let labels: std::collections::HashSet<_> =
            EventType::ALL.iter().map(|&k| event_label(k)).collect();
        assert_eq!(labels.len(), EventType::ALL.len());
        assert_eq!(event_label(EventType::FileUploaded), "file.uploaded");
    }
}
