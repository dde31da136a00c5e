//! The [`Bucket`] seam over HTTP, to the modelled NATS server node of the
//! simulator (`streamgate_testkit::kv_node`): one JSON request per call
//! (`POST /v1/kv`), through any [`HttpTransport`] (madsim's network in the
//! simulator). A watch is a run of long polls, each resuming after the
//! last revision it saw, as an ordered consumer resumes after a reconnect.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Delivered, Entry, KvError, Status, Watch, serde_bytes_b64};
use crate::registry::consul::HttpTransport;

/// The path every request goes to.
pub const PATH: &str = "/v1/kv";
/// Longest answer read.
const BODY_LIMIT: usize = 16 << 20;
/// How long one poll of a watch waits for a write.
pub const POLL_WAIT: Duration = Duration::from_secs(5);

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// [`Bucket::status`].
    Status,
    /// [`Bucket::ensure`].
    Ensure,
    /// [`Bucket::entry`].
    Get {
        /// The key.
        key: String,
    },
    /// [`Bucket::put`] (no revision) or [`Bucket::update`].
    Put {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "serde_bytes_b64")]
        value: Bytes,
        /// The revision the key must be at.
        revision: Option<u64>,
    },
    /// [`Bucket::delete`].
    Delete {
        /// The key.
        key: String,
        /// The revision the key must be at.
        revision: Option<u64>,
    },
    /// [`Bucket::keys`].
    Keys {
        /// The key filter.
        filter: String,
    },
    /// One poll of a watch: without `after` the latest entry of every key
    /// under the filter, at once; otherwise every write after revision
    /// `after`, waiting up to `wait_ms` for one.
    Watch {
        /// The key filter.
        filter: String,
        /// The last revision seen.
        after: Option<u64>,
        /// Longest wait for a write.
        wait_ms: u64,
    },
}

/// A successful call's answer (status 200). A conditional write that found
/// another revision answers 409; anything else failing answers 503 with
/// `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The bucket's settings.
    Status(Status),
    /// Whether the bucket had to be created.
    Ensured(bool),
    /// A key's latest entry.
    Entry(Option<Entry>),
    /// A write's revision.
    Revision(u64),
    /// A delete done.
    Deleted,
    /// Keys under a filter.
    Keys(Vec<String>),
    /// A poll's entries, and the bucket's last revision when it answered.
    Watched {
        /// The entries, in revision order.
        entries: Vec<Entry>,
        /// Where the next poll resumes.
        last: u64,
    },
}

/// A bucket on a modelled server at `base` (`http://ip:port`).
pub struct HttpBucket<T> {
    base: String,
    transport: Arc<T>,
}

impl<T> std::fmt::Debug for HttpBucket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBucket")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<T: HttpTransport> HttpBucket<T> {
    /// A client of the server at `base`.
    #[must_use]
    pub fn new(base: impl Into<String>, transport: T) -> Self {
        Self {
            base: base.into(),
            transport: Arc::new(transport),
        }
    }
}

async fn call<T: HttpTransport>(
    transport: &T,
    base: &str,
    req: &Request,
) -> Result<Answer, KvError> {
    let body = serde_json::to_vec(req).map_err(|e| KvError::Unavailable(e.to_string()))?;
    let req = http::Request::post(format!("{base}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body))
        .map_err(|e| KvError::Unavailable(e.to_string()))?;
    let res = transport
        .send(req, BODY_LIMIT)
        .await
        .map_err(KvError::Unavailable)?;
    match res.status() {
        http::StatusCode::OK => serde_json::from_slice(res.body())
            .map_err(|e| KvError::Unavailable(format!("bad answer: {e}"))),
        http::StatusCode::CONFLICT => Err(KvError::WrongRevision),
        status => Err(KvError::Unavailable(format!(
            "{status}: {}",
            String::from_utf8_lossy(res.body())
        ))),
    }
}

fn unexpected(answer: &Answer) -> KvError {
    KvError::Unavailable(format!("unexpected answer {answer:?}"))
}

impl<T: HttpTransport> HttpBucket<T> {
    async fn call(&self, req: &Request) -> Result<Answer, KvError> {
        call(&*self.transport, &self.base, req).await
    }
}

#[async_trait]
impl<T: HttpTransport> Bucket for HttpBucket<T> {
    async fn status(&self) -> Result<Status, KvError> {
        match self.call(&Request::Status).await? {
            Answer::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    async fn ensure(&self) -> Result<bool, KvError> {
        match self.call(&Request::Ensure).await? {
            Answer::Ensured(created) => Ok(created),
            other => Err(unexpected(&other)),
        }
    }

    async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let key = key.to_owned();
        match self.call(&Request::Get { key }).await? {
            Answer::Entry(entry) => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let (key, revision) = (key.to_owned(), None);
        match self
            .call(&Request::Put {
                key,
                value,
                revision,
            })
            .await?
        {
            Answer::Revision(revision) => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        let (key, revision) = (key.to_owned(), Some(revision));
        match self
            .call(&Request::Put {
                key,
                value,
                revision,
            })
            .await?
        {
            Answer::Revision(revision) => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(&self, key: &str, expect: Option<u64>) -> Result<(), KvError> {
        let (key, revision) = (key.to_owned(), expect);
        match self.call(&Request::Delete { key, revision }).await? {
            Answer::Deleted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn keys(&self, filter: &str) -> Result<Vec<String>, KvError> {
        let filter = filter.to_owned();
        match self.call(&Request::Keys { filter }).await? {
            Answer::Keys(keys) => Ok(keys),
            other => Err(unexpected(&other)),
        }
    }

    async fn watch(&self, filter: &str) -> Result<Watch, KvError> {
        let first = Request::Watch {
            filter: filter.to_owned(),
            after: None,
            wait_ms: 0,
        };
        let (entries, last) = match self.call(&first).await? {
            Answer::Watched { entries, last } => (entries, last),
            other => return Err(unexpected(&other)),
        };
        let pending = entries.len() as u64;
        let state = Poll {
            transport: self.transport.clone(),
            base: self.base.clone(),
            filter: filter.to_owned(),
            queue: entries.into(),
            last,
            done: false,
        };
        let entries = futures::stream::unfold(state, Poll::next);
        Ok(Watch {
            pending,
            entries: Box::pin(entries),
        })
    }
}

/// A watch's state between polls.
struct Poll<T> {
    transport: Arc<T>,
    base: String,
    filter: String,
    queue: std::collections::VecDeque<Entry>,
    last: u64,
    done: bool,
}

impl<T: HttpTransport> Poll<T> {
    async fn next(mut self) -> Option<(Result<Delivered, KvError>, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(entry) = self.queue.pop_front() {
                let pending = self.queue.len() as u64;
                return Some((Ok(Delivered { entry, pending }), self));
            }
            let req = Request::Watch {
                filter: self.filter.clone(),
                after: Some(self.last),
                wait_ms: u64::try_from(POLL_WAIT.as_millis()).unwrap_or(u64::MAX),
            };
            match call(&*self.transport, &self.base, &req).await {
                Ok(Answer::Watched { entries, last }) => {
                    self.last = self.last.max(last);
                    self.queue.extend(entries);
                }
                Ok(other) => {
                    self.done = true;
                    return Some((Err(unexpected(&other)), self));
                }
                Err(e) => {
                    self.done = true;
                    return Some((Err(e), self));
                }
            }
        }
    }
}
