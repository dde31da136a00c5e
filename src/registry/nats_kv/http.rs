//! The [`Bucket`] seam over HTTP, to the modelled NATS server node of the
//! simulator (`streamgate_testkit::kv_node`): one JSON request per call
//! (`POST /v1/kv`), through any [`HttpTransport`] (madsim's network in the
//! simulator). A watch (`POST /v1/kv/watch`) is one streamed answer of
//! JSON lines ([`WatchLine`]): the listing, then each later write as the
//! server pushes it, as an ordered consumer's messages arrive.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use futures::StreamExt as _;

use super::bucket::{Bucket, Delivered, Entry, KvError, Status, Watch, serde_bytes_b64};
use crate::registry::consul::HttpTransport;

/// The path every request but a watch goes to.
pub const PATH: &str = "/v1/kv";
/// The path of a watch ([`WatchRequest`]), answered with [`WatchLine`]s.
pub const WATCH_PATH: &str = "/v1/kv/watch";
/// Longest line of a watch.
const LINE_LIMIT: usize = 1 << 20;

/// Opens a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The key filter.
    pub filter: String,
}

/// One line of a watch's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchLine {
    /// First: how many entries the listing holds.
    Start(u64),
    /// An entry, and how many are queued behind it.
    Entry(Delivered),
    /// Last: why the watch ended.
    End(String),
}
/// Longest answer read.
const BODY_LIMIT: usize = 16 << 20;

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

    async fn write(&self, key: &str, value: Bytes, revision: Option<u64>) -> Result<u64, KvError> {
        let key = key.to_owned();
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
        self.write(key, value, None).await
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        self.write(key, value, Some(revision)).await
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
        let body = serde_json::to_vec(&WatchRequest {
            filter: filter.to_owned(),
        })
        .map_err(|e| KvError::Unavailable(e.to_string()))?;
        let req = http::Request::post(format!("{}{WATCH_PATH}", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body))
            .map_err(|e| KvError::Unavailable(e.to_string()))?;
        let streamed = self
            .transport
            .stream(req)
            .await
            .map_err(KvError::Unavailable)?;
        let mut lines = Box::pin(lines(streamed.body));
        if streamed.status != http::StatusCode::OK {
            return Err(KvError::Unavailable(format!("watch: {}", streamed.status)));
        }
        let pending = match lines.next().await {
            Some(Ok(WatchLine::Start(pending))) => pending,
            Some(Ok(other)) => {
                return Err(KvError::Unavailable(format!("watch began with {other:?}")));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(KvError::Unavailable("watch: no answer".to_owned())),
        };
        let entries = lines.map(|line| match line {
            Ok(WatchLine::Entry(delivered)) => Ok(delivered),
            Ok(WatchLine::End(why)) => Err(KvError::Unavailable(format!("watch ended: {why}"))),
            Ok(WatchLine::Start(_)) => Err(KvError::Unavailable("watch began twice".to_owned())),
            Err(e) => Err(e),
        });
        Ok(Watch {
            pending,
            entries: Box::pin(entries),
        })
    }
}

/// The JSON lines of a streamed body, each parsed as it completes.
fn lines(
    body: futures::stream::BoxStream<'static, Result<Bytes, String>>,
) -> impl futures::Stream<Item = Result<WatchLine, KvError>> + Send + 'static {
    let state = (body, bytes::BytesMut::new(), false);
    futures::stream::unfold(state, |(mut body, mut buf, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(at) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(at + 1);
                let parsed = serde_json::from_slice(&line[..at])
                    .map_err(|e| KvError::Unavailable(format!("bad watch line: {e}")));
                let done = parsed.is_err();
                return Some((parsed, (body, buf, done)));
            }
            if buf.len() > LINE_LIMIT {
                let e = KvError::Unavailable("watch line too long".to_owned());
                return Some((Err(e), (body, buf, true)));
            }
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(KvError::Unavailable(e)), (body, buf, true))),
                None => return None,
            }
        }
    })
}
