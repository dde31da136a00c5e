//! NATS event bus (async-nats): core subjects and queue groups, bounded
//! reconnects and buffers, and a JetStream mode for events that must not be lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;

use super::{
    BusError, Event, EventBus, EventType, Handler, Subscription, check_subscription, dispatch,
};
use crate::rt;

mod jetstream;
mod opts;
mod stats;

pub use opts::{InvalidOpts, JetStreamOpts, NatsOpts, subject_matches};
pub use stats::{BusStats, ConnectionStatus};

use stats::Counters;

/// The NATS bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsBusError {
    /// The options do not validate.
    #[error(transparent)]
    Options(#[from] InvalidOpts),
    /// The first connection failed (and `retry_on_initial_connect` is off).
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The JetStream stream could not be created or read.
    #[error("JetStream setup failed: {0}")]
    JetStream(BusError),
}

/// An [`EventBus`] over a NATS server.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    opts: NatsOpts,
    durable: Option<Arc<jetstream::Durable>>,
    /// Per [`EventType`] (by position in [`EventType::ALL`]): its wire subject
    /// and whether it goes through JetStream, worked out once, not per publish
    /// (a `Subject` clones without allocating).
    routes: Vec<(async_nats::Subject, bool)>,
    counters: Arc<Counters>,
    closed: AtomicBool,
}

/// `subject` under `prefix`, as it travels on the wire.
fn prefixed(prefix: Option<&str>, subject: &str) -> String {
    prefix.map_or_else(|| subject.to_owned(), |p| format!("{p}.{subject}"))
}

impl NatsBus {
    /// Validates `opts` and connects (creating the JetStream stream if configured).
    ///
    /// # Errors
    /// [`NatsBusError`] for bad options, a failed first connect, or a stream
    /// the server refuses.
    pub async fn connect(opts: NatsOpts) -> Result<Self, NatsBusError> {
        opts.validate()?;
        let counters = Arc::new(Counters::default());
        let events = counters.clone();
        let (wait_ms, jitter_ms) = (opts.reconnect_wait_ms, opts.reconnect_jitter_ms);
        let connect = async_nats::ConnectOptions::new()
            .name(&opts.client_name)
            .connection_timeout(NatsOpts::ms(opts.connect_timeout_ms))
            .request_timeout(Some(NatsOpts::ms(opts.request_timeout_ms)))
            .client_capacity(opts.publish_buffer_capacity)
            .subscription_capacity(opts.subscription_capacity)
            .max_reconnects(opts.reconnect_attempts_max)
            .reconnect_delay_callback(move |attempt| reconnect_delay(attempt, wait_ms, jitter_ms))
            .event_callback(move |event| {
                events.on_event(&event);
                std::future::ready(())
            });
        let mut connect = opts
            .auth
            .apply(connect)
            .await
            .map_err(|reason| InvalidOpts {
                field: "auth",
                reason,
            })?;
        if opts.retry_on_initial_connect {
            counters.set_status(ConnectionStatus::Disconnected);
            connect = connect.retry_on_initial_connect();
        }
        let client = connect.connect(opts.url.as_str()).await?;
        let durable = opts
            .jetstream
            .clone()
            .map(|js| Arc::new(jetstream::Durable::new(client.clone(), &opts, js)));
        if let Some(durable) = durable.as_ref().filter(|_| !opts.retry_on_initial_connect) {
            durable.stream().await.map_err(NatsBusError::JetStream)?;
        }
        let routes = EventType::ALL
            .iter()
            .map(|kind| {
                let subject = kind.subject();
                let wire = prefixed(opts.subject_prefix.as_deref(), subject);
                let durable = durable.as_ref().is_some_and(|d| d.covers(subject));
                (async_nats::Subject::from(wire), durable)
            })
            .collect();
        Ok(Self {
            client,
            opts,
            durable,
            routes,
            counters,
            closed: AtomicBool::new(false),
        })
    }

    /// Where the connection stands.
    #[must_use]
    pub fn status(&self) -> ConnectionStatus {
        self.counters.status()
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> BusStats {
        self.counters.snapshot()
    }

    /// The underlying client (for raw NATS use beside the bus).
    #[must_use]
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The subject `subject` travels on (with the configured prefix).
    #[must_use]
    pub fn wire_subject(&self, subject: &str) -> String {
        prefixed(self.opts.subject_prefix.as_deref(), subject)
    }

    fn durable_for(&self, subject: &str) -> Option<&Arc<jetstream::Durable>> {
        self.durable.as_ref().filter(|d| d.covers(subject))
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if self.counters.is_closed() {
            return Err(BusError::Unavailable(
                "NATS connection closed after the reconnect budget ran out".to_owned(),
            ));
        }
        Ok(())
    }

    async fn publish_core(
        &self,
        subject: async_nats::Subject,
        payload: bytes::Bytes,
    ) -> Result<(), BusError> {
        let confirm = self.opts.confirm_publish;
        if confirm && self.status() != ConnectionStatus::Connected {
            return Err(BusError::Unavailable("NATS disconnected".to_owned()));
        }
        let limit = NatsOpts::ms(self.opts.publish_timeout_ms);
        let send = async {
            self.client
                .publish(subject, payload)
                .await
                .map_err(|e| BusError::Unavailable(format!("publish: {e}")))?;
            if confirm {
                // Boxed, like JetStream's publish: a request's future is
                // large, and unconfirmed publishes should not carry it.
                Box::pin(self.confirm()).await?;
            }
            Ok(())
        };
        // Fast path: with room in the buffer the send completes on its first
        // poll, and arming a timer per publish would cost more than the send.
        let mut send = std::pin::pin!(send);
        if let std::task::Poll::Ready(result) = futures::poll!(send.as_mut()) {
            return result;
        }
        rt::timeout(limit, send)
            .await
            .unwrap_or_else(|rt::Elapsed| {
                Err(BusError::Unavailable(format!(
                    "publish buffer full or server unreachable for {} ms",
                    limit.as_millis()
                )))
            })
    }

    /// A round trip proving the server processed everything this connection
    /// sent before (a client flush only empties the socket buffer): a request
    /// nobody answers, which the server bounces with "no responders".
    async fn confirm(&self) -> Result<(), BusError> {
        use async_nats::RequestErrorKind as K;
        match self
            .client
            .request(CONFIRM_SUBJECT, bytes::Bytes::new())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == K::NoResponders => Ok(()),
            Err(e) => Err(BusError::Unavailable(format!("publish not confirmed: {e}"))),
        }
    }
}

/// The subject [`NatsBus`] bounces its publish confirmations off (never subscribed).
const CONFIRM_SUBJECT: &str = "_STREAMGATE.confirm";

/// Delay before reconnect `attempt` (1-based): the first at once, then
/// `wait_ms`; each plus a random jitter of up to `jitter_ms`.
fn reconnect_delay(attempt: usize, wait_ms: u64, jitter_ms: u64) -> Duration {
    let base = if attempt <= 1 { 0 } else { wait_ms };
    let jitter = rt::random_u64() % jitter_ms.saturating_add(1);
    Duration::from_millis(base.saturating_add(jitter))
}

#[async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.check_open()?;
        let payload = bytes::Bytes::from(event.encode()?);
        let route = EventType::ALL
            .iter()
            .position(|k| *k == event.kind)
            .and_then(|i| self.routes.get(i));
        let Some((wire, durable)) = route else {
            // Every kind is in ALL; a miss is a bug in this module.
            unreachable!("no route for {:?}", event.kind);
        };
        let result = match self.durable.as_ref().filter(|_| *durable) {
            Some(durable) => {
                let deadline = rt::now() + NatsOpts::ms(self.opts.publish_timeout_ms);
                // Boxed: its retry loop makes a future of kilobytes, which
                // would otherwise be allocated and copied on every publish,
                // core ones included.
                Box::pin(durable.publish(wire.clone(), event, payload, deadline)).await
            }
            None => self.publish_core(wire.clone(), payload).await,
        };
        if result.is_err() {
            Counters::bump(&self.counters.publish_failures);
        }
        result
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        check_subscription(subject, queue_group)?;
        self.check_open()?;
        let wire = self.wire_subject(subject);
        let counters = self.counters.clone();
        if let Some(durable) = self.durable_for(subject) {
            let consumer = durable.consumer(&wire, queue_group).await?;
            let run = durable.clone().run(
                consumer,
                wire,
                queue_group.map(str::to_owned),
                handler,
                counters,
            );
            return Ok(Subscription::new(rt::spawn(run)));
        }
        let subscriber = match queue_group {
            Some(group) => self.client.queue_subscribe(wire, group.to_owned()).await,
            None => self.client.subscribe(wire).await,
        }
        .map_err(|e| BusError::Unavailable(format!("subscribe: {e}")))?;
        Ok(Subscription::new(rt::spawn(run_core(
            subscriber, handler, counters,
        ))))
    }

    async fn health(&self) -> Result<(), BusError> {
        self.check_open()?;
        let state = self.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable(format!(
                "NATS server not connected ({state})"
            )));
        }
        let limit = NatsOpts::ms(self.opts.flush_timeout_ms);
        match rt::timeout(limit, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(format!("NATS flush: {e}"))),
            Err(_) => Err(BusError::Unavailable(format!(
                "NATS flush took over {limit:?}"
            ))),
        }
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Flush what is buffered, then drain (ends the subscriptions and the
        // connection), all within one bound: a dead server must not hang close.
        let limit = NatsOpts::ms(self.opts.flush_timeout_ms);
        let shutdown = async {
            if let Err(e) = self.client.flush().await {
                tracing::warn!(error = %e, "nats bus: flush on close");
            }
            if let Err(e) = self.client.drain().await {
                tracing::warn!(error = %e, "nats bus: drain on close");
            }
        };
        if rt::timeout(limit, shutdown).await.is_err() {
            tracing::warn!("nats bus: close timed out; buffered events may be lost");
        }
        self.counters.set_status(ConnectionStatus::Closed);
    }
}

/// Delivers a core subscription's messages until it ends.
async fn run_core(
    mut subscriber: async_nats::Subscriber,
    handler: Handler,
    counters: Arc<Counters>,
) {
    while let Some(message) = subscriber.next().await {
        let event = match Event::decode(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                Counters::bump(&counters.malformed_events);
                tracing::warn!(subject = %message.subject, error = %e, "skipping malformed event");
                continue;
            }
        };
        Counters::bump(&counters.delivered);
        if !dispatch(&handler, event).await {
            Counters::bump(&counters.handler_failures);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_is_bounded_and_jittered() {
        assert!(reconnect_delay(1, 2_000, 0).is_zero());
        for attempt in 2..50 {
            let d = reconnect_delay(attempt, 2_000, 500);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2_500),
                "{d:?}"
            );
        }
    }

    #[test]
    fn prefix_goes_in_front() {
        assert_eq!(prefixed(Some("t1"), "a.b"), "t1.a.b");
        assert_eq!(prefixed(None, "a.b"), "a.b");
    }
}
