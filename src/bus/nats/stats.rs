//! Connection status and counters of a [`super::NatsBus`], fed by async-nats'
//! event callback and the subscription loops, read as a [`BusStats`] snapshot.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Where the NATS connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Connected to a server.
    Connected,
    /// Lost the server; async-nats is reconnecting (publishes buffer meanwhile).
    Disconnected,
    /// Closed by [`crate::bus::EventBus::close`] or after the reconnect budget ran out.
    Closed,
}

/// A snapshot of the bus counters (monotonic since the bus was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    /// Connections lost.
    pub disconnects: u64,
    /// Connections (re-)established after a loss.
    pub reconnects: u64,
    /// SlowConsumer events: a subscription's buffer was full.
    pub slow_consumer_events: u64,
    /// Messages async-nats dropped for slow consumers (one per event).
    pub dropped_messages: u64,
    /// Messages that were not a valid event envelope (counted, skipped).
    pub malformed_events: u64,
    /// Handler runs that returned an error or panicked.
    pub handler_failures: u64,
    /// Publishes that returned an error to the caller.
    pub publish_failures: u64,
    /// JetStream redeliveries skipped because the event id was already handled.
    pub duplicates_skipped: u64,
    /// Events handed to handlers (successful or not).
    pub delivered: u64,
}

/// The live counters behind [`BusStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    status: AtomicU8,
    pub(crate) disconnects: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) slow_consumer_events: AtomicU64,
    pub(crate) dropped_messages: AtomicU64,
    pub(crate) malformed_events: AtomicU64,
    pub(crate) handler_failures: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
    pub(crate) duplicates_skipped: AtomicU64,
    pub(crate) delivered: AtomicU64,
}

const CONNECTED: u8 = 0;
const DISCONNECTED: u8 = 1;
const CLOSED: u8 = 2;

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        match self.status.load(Ordering::Acquire) {
            CONNECTED => ConnectionStatus::Connected,
            DISCONNECTED => ConnectionStatus::Disconnected,
            _ => ConnectionStatus::Closed,
        }
    }

    /// Records a status change; `Closed` is final.
    pub(crate) fn set_status(&self, status: ConnectionStatus) {
        let new = match status {
            ConnectionStatus::Connected => CONNECTED,
            ConnectionStatus::Disconnected => DISCONNECTED,
            ConnectionStatus::Closed => CLOSED,
        };
        let _ = self
            .status
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old != CLOSED).then_some(new)
            });
    }

    /// Applies one async-nats connection event.
    pub(crate) fn on_event(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                // The first connect (maybe retried) is not a reconnect.
                if self.disconnects.load(Ordering::Relaxed)
                    > self.reconnects.load(Ordering::Relaxed)
                {
                    Self::bump(&self.reconnects);
                }
                self.set_status(ConnectionStatus::Connected);
                tracing::info!("nats bus connected");
            }
            async_nats::Event::Disconnected => {
                Self::bump(&self.disconnects);
                self.set_status(ConnectionStatus::Disconnected);
                tracing::warn!("nats bus disconnected; reconnecting");
            }
            async_nats::Event::Closed => {
                self.set_status(ConnectionStatus::Closed);
                tracing::info!("nats bus connection closed");
            }
            async_nats::Event::SlowConsumer(sid) => {
                Self::bump(&self.slow_consumer_events);
                Self::bump(&self.dropped_messages);
                tracing::warn!(sid, "nats slow consumer: a message was dropped");
            }
            async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                self.set_status(ConnectionStatus::Closed);
                tracing::error!("nats bus gave up reconnecting");
            }
            other => tracing::warn!(event = %other, "nats bus event"),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.status() == ConnectionStatus::Closed
    }

    pub(crate) fn snapshot(&self) -> BusStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            disconnects: get(&self.disconnects),
            reconnects: get(&self.reconnects),
            slow_consumer_events: get(&self.slow_consumer_events),
            dropped_messages: get(&self.dropped_messages),
            malformed_events: get(&self.malformed_events),
            handler_failures: get(&self.handler_failures),
            publish_failures: get(&self.publish_failures),
            duplicates_skipped: get(&self.duplicates_skipped),
            delivered: get(&self.delivered),
        }
    }
}
