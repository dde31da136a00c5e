//! JetStream mode of the NATS bus: one stream, publishes deduplicated by event
//! id and confirmed by PubAck, durable pull consumers with explicit acks.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;

use super::opts::{JetStreamOpts, NatsOpts, subject_matches};
use super::stats::Counters;
use crate::bus::{BusError, Event, Handler, dispatch};
use crate::rt;

/// The JetStream side of a bus: context, settings, and the stream (made once).
#[derive(Debug)]
pub(super) struct Durable {
    context: jetstream::Context,
    opts: JetStreamOpts,
    /// Wire patterns: `opts.subjects` under the bus prefix.
    wire_subjects: Vec<String>,
    stream: tokio::sync::OnceCell<stream::Stream>,
}

impl Durable {
    pub(super) fn new(client: async_nats::Client, nats: &NatsOpts, opts: JetStreamOpts) -> Self {
        let mut context = jetstream::new(client);
        context.set_timeout(NatsOpts::ms(nats.request_timeout_ms));
        let wire_subjects = opts
            .subjects
            .iter()
            .map(|s| super::prefixed(nats.subject_prefix.as_deref(), s))
            .collect();
        Self {
            context,
            opts,
            wire_subjects,
            stream: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether `subject` (before the prefix) goes through JetStream.
    pub(super) fn covers(&self, subject: &str) -> bool {
        self.opts
            .subjects
            .iter()
            .any(|p| subject_matches(p, subject))
    }

    /// The stream, created on first use if missing.
    pub(super) async fn stream(&self) -> Result<&stream::Stream, BusError> {
        self.stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.opts.stream.clone(),
                    subjects: self.wire_subjects.clone(),
                    duplicate_window: NatsOpts::ms(self.opts.duplicate_window_ms),
                    max_age: Duration::from_secs(self.opts.max_age_secs),
                    storage: stream::StorageType::File,
                    ..stream::Config::default()
                };
                self.context
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| BusError::Unavailable(format!("JetStream stream: {e}")))
            })
            .await
    }

    /// Publishes with `Nats-Msg-Id` = event id and waits for the PubAck,
    /// retrying (safe: the server deduplicates) until `deadline`.
    pub(super) async fn publish(
        &self,
        wire_subject: async_nats::Subject,
        event: &Event,
        payload: bytes::Bytes,
        deadline: rt::Instant,
    ) -> Result<(), BusError> {
        self.stream().await?;
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = async {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&event.id);
                let ack = self
                    .context
                    .send_publish(wire_subject.clone(), publish)
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map(|_| ()).map_err(|e| e.to_string())
            };
            let error = match rt::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(rt::Elapsed) => "no PubAck in time".to_owned(),
            };
            if rt::now() + pause >= deadline {
                return Err(BusError::Unavailable(format!(
                    "JetStream publish of {} not acknowledged: {error}",
                    event.id
                )));
            }
            tracing::debug!(event_id = %event.id, %error, "JetStream publish retry");
            rt::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// A pull consumer for `wire_subject`: shared and durable for a queue
    /// group (its name derives from group and subject), private otherwise.
    pub(super) async fn consumer(
        &self,
        wire_subject: &str,
        queue_group: Option<&str>,
    ) -> Result<consumer::PullConsumer, BusError> {
        let stream = self.stream().await?;
        let mut config = consumer::pull::Config {
            filter_subject: wire_subject.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: NatsOpts::ms(self.opts.ack_wait_ms),
            max_deliver: self.opts.max_deliver,
            max_ack_pending: self.opts.max_ack_pending,
            ..consumer::pull::Config::default()
        };
        let name = if let Some(group) = queue_group {
            // A group works off everything the stream holds, not just what
            // arrives after its first member subscribed.
            let name = consumer_name(group, wire_subject);
            config.durable_name = Some(name.clone());
            config.deliver_policy = consumer::DeliverPolicy::All;
            name
        } else {
            let name = format!("sg-{}", rt::random_hex128());
            config.name = Some(name.clone());
            config.deliver_policy = consumer::DeliverPolicy::New;
            config.inactive_threshold = Duration::from_secs(self.opts.inactive_threshold_secs);
            name
        };
        stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| BusError::Unavailable(format!("JetStream consumer {name}: {e}")))
    }

    /// Delivers the consumer's events to `handler` until the bus closes,
    /// re-opening the message stream when the server loses it.
    pub(super) async fn run(
        self: Arc<Self>,
        mut consumer: consumer::PullConsumer,
        wire_subject: String,
        queue_group: Option<String>,
        handler: Handler,
        counters: Arc<Counters>,
    ) {
        let mut seen = RecentIds::new(self.opts.dedup_capacity);
        loop {
            match consumer.messages().await {
                Ok(mut messages) => {
                    while let Some(item) = messages.next().await {
                        match item {
                            Ok(message) => {
                                self.handle(message, &handler, &counters, &mut seen).await
                            }
                            Err(e) => {
                                tracing::warn!(subject = %wire_subject, error = %e, "JetStream pull");
                                if reopen(e.kind()) {
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(subject = %wire_subject, error = %e, "JetStream messages"),
            }
            rt::sleep(Duration::from_millis(500)).await;
            if counters.is_closed() {
                return;
            }
            match self.consumer(&wire_subject, queue_group.as_deref()).await {
                Ok(fresh) => consumer = fresh,
                Err(e) => tracing::warn!(error = %e, "JetStream consumer re-create"),
            }
        }
    }

    async fn handle(
        &self,
        message: jetstream::Message,
        handler: &Handler,
        counters: &Counters,
        seen: &mut RecentIds,
    ) {
        let event = match Event::decode(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                Counters::bump(&counters.malformed_events);
                tracing::warn!(subject = %message.subject, error = %e, "skipping malformed event");
                // Redelivering garbage cannot help.
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        if seen.contains(&event.id) {
            Counters::bump(&counters.duplicates_skipped);
            ack(&message, AckKind::Ack).await;
            return;
        }
        let id = event.id.clone();
        Counters::bump(&counters.delivered);
        if dispatch(handler, event).await {
            seen.insert(id);
            ack(&message, AckKind::Ack).await;
            return;
        }
        Counters::bump(&counters.handler_failures);
        let delivered = message.info().map_or(1, |info| info.delivered.max(1));
        if delivered >= self.opts.max_deliver {
            tracing::error!(event_id = %id, delivered, "event given up after its last delivery");
            ack(&message, AckKind::Term).await;
        } else {
            let exponent = u32::try_from(delivered - 1).unwrap_or(u32::MAX).min(16);
            let delay = NatsOpts::ms(self.opts.nak_delay_ms)
                .saturating_mul(1 << exponent)
                .min(NatsOpts::ms(self.opts.nak_delay_max_ms));
            ack(&message, AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Whether a pull error means the consumer or its stream is gone.
fn reopen(kind: consumer::pull::MessagesErrorKind) -> bool {
    use consumer::pull::MessagesErrorKind as K;
    matches!(
        kind,
        K::ConsumerDeleted | K::NoResponders | K::RequestLimitExceeded | K::PushBasedConsumer
    )
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    // A lost ack means a redelivery, which the recent-id set absorbs.
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "JetStream ack failed");
    }
}

/// A durable consumer name for `group` on `subject`: readable, legal
/// (no `.`, `*`, `>`), at most 64 bytes, distinct per (group, subject).
fn consumer_name(group: &str, subject: &str) -> String {
    let readable: String = format!("{group}_{subject}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let hash = format!("{group}\0{subject}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{readable}-{hash:016x}")
}

/// The most recent event ids handled, bounded (oldest forgotten first).
#[derive(Debug)]
struct RecentIds {
    capacity: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut ids = RecentIds::new(2);
        for id in ["a", "b", "a", "c"] {
            ids.insert(id.to_owned());
        }
        assert!(!ids.contains("a") && ids.contains("b") && ids.contains("c"));
    }

    #[test]
    fn consumer_names_are_legal_and_distinct() {
        let a = consumer_name("workers", "streamgate.v1.job.submitted");
        let b = consumer_name("workers", "streamgate.v1.job.completed");
        assert_ne!(a, b);
        assert!(a.len() <= 64 && !a.contains(['.', '*', '>', ' ']), "{a}");
    }
}
