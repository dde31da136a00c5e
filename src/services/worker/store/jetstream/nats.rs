//! The [`WorkQueue`] seam on a real NATS server, through async-nats.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures::StreamExt as _;

use super::queue::{Delivery, Published, QueueError, Settle, WorkQueue};
use crate::rt;

/// The durable consumer every worker pulls from.
const CONSUMER: &str = "workers";

/// The work queue `<name>_queue` and its consumer.
pub struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    consumer: consumer::PullConsumer,
    timeout: Duration,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue").finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError(format!("{what}: {e}"))
}

impl NatsQueue {
    /// Binds to the work queue `<name>_queue` on subjects `<name>.dispatch.*`
    /// and its consumer, creating them where missing (existing ones keep
    /// their settings): at most `max_active` messages, an ack wait of
    /// `ack_wait`.
    ///
    /// # Errors
    /// The server refuses or is unreachable.
    pub async fn bind(
        client: async_nats::Client,
        js: &jetstream::Context,
        name: &str,
        max_active: u64,
        ack_wait: Duration,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        let max_active = i64::try_from(max_active).unwrap_or(i64::MAX);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_queue"),
                description: Some(
                    "StreamGate worker dispatch (one message per unfinished job)".to_owned(),
                ),
                subjects: vec![format!("{name}.dispatch.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                max_messages: max_active,
                max_messages_per_subject: 1,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| unavailable("create the work queue", e))?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    description: Some("StreamGate workers".to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    deliver_policy: DeliverPolicy::All,
                    max_deliver: -1,
                    // Delayed jobs wait unacknowledged: allow all of them.
                    max_ack_pending: max_active,
                    ..pull::Config::default()
                },
            )
            .await
            .map_err(|e| unavailable("create the work queue's consumer", e))?;
        Ok(Self {
            client,
            js: js.clone(),
            stream,
            consumer,
            timeout,
        })
    }
}

fn ack_kind(how: Settle) -> AckKind {
    match how {
        Settle::Ack => AckKind::Ack,
        Settle::Nak(delay) => AckKind::Nak(delay.map(Duration::from_millis)),
        Settle::Progress => AckKind::Progress,
        Settle::Term => AckKind::Term,
    }
}

#[async_trait]
impl WorkQueue for NatsQueue {
    async fn publish(&self, subject: &str) -> Result<Published, QueueError> {
        let ack = match self
            .js
            .publish(subject.to_owned(), bytes::Bytes::new())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(_) => Ok(Published::Queued),
            // The server's words (JSStreamStoreFailedF); there is no code
            // that tells the two limits apart.
            Err(e) if e.to_string().contains("maximum messages per subject") => {
                Ok(Published::AlreadyQueued)
            }
            Err(e) if e.to_string().contains("maximum messages") => Ok(Published::Full),
            Err(e) => Err(unavailable("publish", e)),
        }
    }

    async fn purge(&self, subject: &str) -> Result<(), QueueError> {
        self.stream
            .purge()
            .filter(subject)
            .await
            .map(drop)
            .map_err(|e| unavailable("purge", e))
    }

    async fn fetch(&self) -> Result<Option<Delivery>, QueueError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .map_err(|e| unavailable("fetch", e))?;
        let msg = match batch.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err(unavailable("fetch", e)),
            None => return Ok(None),
        };
        let delivered = msg
            .info()
            .map_or(1, |i| u64::try_from(i.delivered).unwrap_or(1));
        let Some(reply) = msg.reply.as_ref() else {
            return Err(unavailable("fetch", "a message without an ack subject"));
        };
        Ok(Some(Delivery {
            subject: msg.subject.to_string(),
            reply: reply.to_string(),
            delivered,
        }))
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        how: Settle,
        confirm: bool,
    ) -> Result<(), QueueError> {
        let reply = delivery.reply.clone();
        let payload: bytes::Bytes = ack_kind(how).into();
        if confirm {
            // What async-nats's double ack does: a request, answered once
            // the server applied it.
            rt::timeout(self.timeout, self.client.request(reply, payload))
                .await
                .map_err(|e| unavailable("settle", e))?
                .map(drop)
                .map_err(|e| unavailable("settle", e))
        } else {
            self.client
                .publish(reply, payload)
                .await
                .map_err(|e| unavailable("settle", e))
        }
    }
}
