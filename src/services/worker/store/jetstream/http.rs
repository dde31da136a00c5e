//! The [`WorkQueue`] seam over HTTP, to the modelled NATS server node of
//! the simulator (`streamgate_testkit::queue_node`): one JSON request per
//! call (`POST /v1/queue`), through any [`HttpTransport`] (madsim's network
//! in the simulator).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::queue::{Delivery, Published, QueueError, Settle, WorkQueue};
use crate::registry::consul::HttpTransport;

/// The path every request goes to.
pub const PATH: &str = "/v1/queue";
/// Longest answer read.
const BODY_LIMIT: usize = 1 << 20;

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// [`WorkQueue::publish`].
    Publish {
        /// The subject.
        subject: String,
    },
    /// [`WorkQueue::purge`].
    Purge {
        /// The subject.
        subject: String,
    },
    /// [`WorkQueue::fetch`].
    Fetch,
    /// [`WorkQueue::settle`].
    Settle {
        /// The delivery's ack subject.
        reply: String,
        /// How.
        how: Settle,
    },
}

/// A successful call's answer (status 200); a failure answers 503 with
/// `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// What a publication came to.
    Published(Published),
    /// A purge done.
    Purged,
    /// The message delivered, if one was due.
    Fetched(Option<Delivery>),
    /// A settlement applied.
    Settled,
}

/// The work queue on a modelled server at `base` (`http://ip:port`, and a
/// path prefix if the node serves more than the queue).
pub struct HttpQueue<T> {
    base: String,
    transport: Arc<T>,
}

impl<T> std::fmt::Debug for HttpQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpQueue")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<T: HttpTransport> HttpQueue<T> {
    /// A client of the server at `base`.
    #[must_use]
    pub fn new(base: impl Into<String>, transport: T) -> Self {
        Self {
            base: base.into(),
            transport: Arc::new(transport),
        }
    }

    async fn call(&self, req: &Request) -> Result<Answer, QueueError> {
        let body = serde_json::to_vec(req).map_err(|e| QueueError(e.to_string()))?;
        let req = http::Request::post(format!("{}{PATH}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .map_err(|e| QueueError(e.to_string()))?;
        let res = self
            .transport
            .send(req, BODY_LIMIT)
            .await
            .map_err(QueueError)?;
        if res.status() != http::StatusCode::OK {
            return Err(QueueError(format!(
                "{}: {}",
                res.status(),
                String::from_utf8_lossy(res.body())
            )));
        }
        serde_json::from_slice(res.body()).map_err(|e| QueueError(format!("bad answer: {e}")))
    }
}

fn unexpected(answer: &Answer) -> QueueError {
    QueueError(format!("unexpected answer {answer:?}"))
}

#[async_trait]
impl<T: HttpTransport> WorkQueue for HttpQueue<T> {
    async fn publish(&self, subject: &str) -> Result<Published, QueueError> {
        let subject = subject.to_owned();
        match self.call(&Request::Publish { subject }).await? {
            Answer::Published(published) => Ok(published),
            other => Err(unexpected(&other)),
        }
    }

    async fn purge(&self, subject: &str) -> Result<(), QueueError> {
        let subject = subject.to_owned();
        match self.call(&Request::Purge { subject }).await? {
            Answer::Purged => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn fetch(&self) -> Result<Option<Delivery>, QueueError> {
        match self.call(&Request::Fetch).await? {
            Answer::Fetched(delivery) => Ok(delivery),
            other => Err(unexpected(&other)),
        }
    }

    /// Every settlement is answered once applied: `confirm` changes only
    /// what a lost answer means, which the caller cannot tell apart here.
    async fn settle(
        &self,
        delivery: &Delivery,
        how: Settle,
        _confirm: bool,
    ) -> Result<(), QueueError> {
        let reply = delivery.reply.clone();
        match self.call(&Request::Settle { reply, how }).await? {
            Answer::Settled => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
