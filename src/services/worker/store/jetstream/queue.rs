//! The seam under the job queue's dispatch: what
//! [`JetStreamStore`](super::JetStreamStore) uses of a JetStream work-queue
//! stream and its one durable pull consumer, and nothing more. async-nats
//! serves it in production ([`super::nats::NatsQueue`]); in the simulator a
//! modelled server node does, reached over madsim's network
//! ([`super::http::HttpQueue`], the model in `streamgate_testkit::queue_node`).
//! One contract (`streamgate_testkit::queue_contract`) runs against both, so
//! the model answers as the real server does.
//!
//! The stream keeps at most one message per subject and a bounded number in
//! all, refusing new ones past either limit (discard new). The consumer
//! hands each message to one caller at a time; the caller settles it:
//! - `Ack` or `Term` removes it (work-queue retention);
//! - `Nak` gives it back, at once or after a delay (a delayed NAK keeps the
//!   message pending until then, so it counts against the consumer's
//!   max ack pending);
//! - `Progress` restarts its ack wait;
//! - a message left unsettled past the ack wait is delivered again.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a publication came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Published {
    /// Stored.
    Queued,
    /// Refused: the subject already holds a message.
    AlreadyQueued,
    /// Refused: the stream holds its most messages.
    Full,
}

/// How a delivered message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    /// Done: the message goes.
    Ack,
    /// Not now: delivered again at once (`None`) or after the delay.
    Nak(Option<u64>),
    /// Still working: the ack wait starts again.
    Progress,
    /// Never again: the message goes.
    Term,
}

/// A message the consumer delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Its subject.
    pub subject: String,
    /// Where its settlement goes (the server's ack subject).
    pub reply: String,
    /// How many times it was delivered, this time included.
    pub delivered: u64,
}

/// Why a queue call failed: the server, the stream or the connection (a
/// description).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueueError(pub String);

/// A work-queue stream and its consumer on a server. Callers bound each
/// call's time.
#[async_trait]
pub trait WorkQueue: Send + Sync + 'static {
    /// Publishes an empty message on `subject`.
    async fn publish(&self, subject: &str) -> Result<Published, QueueError>;
    /// Removes the message of `subject`, delivered or not.
    async fn purge(&self, subject: &str) -> Result<(), QueueError>;
    /// The next message due, if one is (without waiting for one).
    async fn fetch(&self) -> Result<Option<Delivery>, QueueError>;
    /// Settles `delivery`; with `confirm`, returns once the server has
    /// applied it (a double ack), else once it is sent.
    async fn settle(
        &self,
        delivery: &Delivery,
        how: Settle,
        confirm: bool,
    ) -> Result<(), QueueError>;
}
