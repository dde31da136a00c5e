//! A model of a NATS server's JetStream key-value bucket, the one the
//! registry uses, served over HTTP ([`streamgate::registry::nats_kv::http`])
//! so the simulator can run it as a node of its own.
//!
//! Semantics follow the real server (checked by
//! [`crate::kv_contract`] against both):
//! - every write is a message with the bucket's next sequence (the
//!   revision, shared by every key) and the server's timestamp;
//! - a key keeps its last `history` messages; a delete leaves a marker,
//!   which is the key's latest entry and still listed among the keys;
//! - a conditional write or delete succeeds only if the key's last
//!   sequence is the one given (0 for a key without messages);
//! - messages older than `max_age` go (checked on every call, as the
//!   server's expiry timer would have removed them by then);
//! - a watch first gets the latest entry of every key under its filter,
//!   then every later write in order; a watch that resumes past the
//!   bucket's last sequence (the bucket was lost and made again) is cut;
//! - a missing bucket answers every call but `ensure` with an error.
//!
//! Durability: the state lives in this value, outside any node, so a node
//! restart keeps it as JetStream's file storage does across a process
//! restart; [`KvNode::wipe`] is a server that came back without its store
//! directory.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use streamgate::registry::nats_kv::bucket::Delivered;
use streamgate::registry::nats_kv::bucket::{Entry, Op, Status, matches};
use streamgate::registry::nats_kv::http::{
    Answer, PATH, Request, WATCH_PATH, WatchLine, WatchRequest,
};
use streamgate::rt::{self, watch};

#[derive(Debug, Clone)]
struct Msg {
    key: String,
    value: Bytes,
    op: Op,
    written_unix_ms: u64,
}

#[derive(Debug, Default)]
struct Stream {
    last: u64,
    messages: BTreeMap<u64, Msg>,
    /// Each key's sequences, oldest first.
    keys: HashMap<String, VecDeque<u64>>,
}

impl Stream {
    fn entry(&self, seq: u64) -> Option<Entry> {
        self.messages.get(&seq).map(|m| Entry {
            key: m.key.clone(),
            value: m.value.clone(),
            revision: seq,
            written_unix_ms: m.written_unix_ms,
            op: m.op,
        })
    }

    fn last_of(&self, key: &str) -> u64 {
        self.keys
            .get(key)
            .and_then(|seqs| seqs.back().copied())
            .unwrap_or(0)
    }

    fn expire(&mut self, now_ms: u64, max_age_ms: u64) {
        if max_age_ms == 0 {
            return;
        }
        let old: Vec<u64> = self
            .messages
            .iter()
            .take_while(|(_, m)| m.written_unix_ms.saturating_add(max_age_ms) <= now_ms)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in old {
            self.remove(seq);
        }
    }

    fn remove(&mut self, seq: u64) {
        if let Some(m) = self.messages.remove(&seq)
            && let Some(seqs) = self.keys.get_mut(&m.key)
        {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.keys.remove(&m.key);
            }
        }
    }

    fn append(&mut self, msg: Msg, history: i64) -> u64 {
        self.last += 1;
        let seq = self.last;
        let seqs = self.keys.entry(msg.key.clone()).or_default();
        seqs.push_back(seq);
        let keep = usize::try_from(history.max(1)).unwrap_or(1);
        let mut dropped = Vec::new();
        while seqs.len() > keep {
            dropped.extend(seqs.pop_front());
        }
        self.messages.insert(seq, msg);
        for old in dropped {
            self.messages.remove(&old);
        }
        seq
    }
}

#[derive(Debug)]
struct Inner {
    settings: Status,
    stream: Option<Stream>,
}

/// The modelled server with one bucket.
#[derive(Debug)]
pub struct KvNode {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
}

enum Failure {
    Wrong,
    Unavailable(String),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Self::Wrong => (
                StatusCode::CONFLICT,
                Json(serde_json::json!({"error": "wrong last sequence"})),
            )
                .into_response(),
            Self::Unavailable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": e })),
            )
                .into_response(),
        }
    }
}

fn gone() -> Failure {
    Failure::Unavailable("stream not found".into())
}

impl KvNode {
    /// A server whose bucket exists, empty, with these settings.
    #[must_use]
    pub fn new(settings: Status) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                settings,
                stream: Some(Stream::default()),
            }),
            changes: watch::Sender::new(0),
        })
    }

    /// The HTTP API ([`streamgate::registry::nats_kv::http`]).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            .route(WATCH_PATH, post(watch))
            .with_state(self.clone())
    }

    /// The server lost its data: the bucket is gone until someone ensures it.
    pub fn wipe(&self) {
        self.lock().stream = None;
        self.changes.send_modify_wake();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the live stream, expired messages removed first.
    fn with_stream<T>(
        &self,
        f: impl FnOnce(&mut Stream, &Status) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut inner = self.lock();
        let settings = inner.settings;
        let stream = inner.stream.as_mut().ok_or_else(gone)?;
        stream.expire(rt::unix_ms(), settings.max_age_ms);
        let before = stream.last;
        let out = f(stream, &settings);
        let after = stream.last;
        drop(inner);
        if after != before {
            self.changes.send_modify_wake();
        }
        out
    }

    fn write(&self, key: &str, value: Bytes, op: Op, expect: Option<u64>) -> Result<u64, Failure> {
        self.with_stream(|s, settings| {
            if expect.is_some_and(|rev| s.last_of(key) != rev) {
                return Err(Failure::Wrong);
            }
            let msg = Msg {
                key: key.to_owned(),
                value,
                op,
                written_unix_ms: rt::unix_ms(),
            };
            Ok(s.append(msg, settings.history))
        })
    }

    fn answer(&self, req: Request) -> Result<Answer, Failure> {
        match req {
            Request::Status => {
                let inner = self.lock();
                inner.stream.as_ref().ok_or_else(gone)?;
                Ok(Answer::Status(inner.settings))
            }
            Request::Ensure => {
                let mut inner = self.lock();
                let created = inner.stream.is_none();
                inner.stream.get_or_insert_with(Stream::default);
                Ok(Answer::Ensured(created))
            }
            Request::Get { key } => self.with_stream(|s, _| {
                let last = s.last_of(&key);
                Ok(Answer::Entry(s.entry(last)))
            }),
            Request::Put {
                key,
                value,
                revision,
            } => self
                .write(&key, value, Op::Put, revision)
                .map(Answer::Revision),
            Request::Delete { key, revision } => self
                .write(&key, Bytes::new(), Op::Delete, revision)
                .map(|_| Answer::Deleted),
            Request::Keys { filter } => self.with_stream(|s, _| {
                let mut keys: Vec<String> = s
                    .keys
                    .keys()
                    .filter(|k| matches(&filter, k))
                    .cloned()
                    .collect();
                keys.sort();
                Ok(Answer::Keys(keys))
            }),
        }
    }
}

/// The latest entry of every key under `filter`, in revision order.
fn latest(s: &Stream, filter: &str) -> Vec<Entry> {
    let mut latest: Vec<u64> = s
        .keys
        .iter()
        .filter(|(k, _)| matches(filter, k))
        .filter_map(|(_, seqs)| seqs.back().copied())
        .collect();
    latest.sort_unstable();
    latest.into_iter().filter_map(|seq| s.entry(seq)).collect()
}

/// Every write under `filter` after revision `after`; the watch is cut
/// (an `Err`) if the bucket's sequence went back (it was lost and made
/// again), as the server deletes the consumers of a lost stream.
fn after(s: &Stream, filter: &str, after: u64) -> Result<Vec<Entry>, Failure> {
    if after > s.last {
        return Err(Failure::Unavailable("consumer deleted".into()));
    }
    Ok(s.messages
        .range(after + 1..)
        .filter(|(_, m)| matches(filter, &m.key))
        .filter_map(|(seq, _)| s.entry(*seq))
        .collect())
}

fn line(line: &WatchLine) -> Bytes {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A watch's state while it follows the bucket.
struct Follow {
    node: Arc<KvNode>,
    filter: String,
    last: u64,
    queue: VecDeque<Bytes>,
    changes: watch::Receiver<u64>,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Self)> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some((Ok(line), self));
            }
            if self.done || self.changes.changed().await.is_err() {
                return None;
            }
            drop(self.changes.borrow_and_update());
            let (filter, last) = (self.filter.clone(), self.last);
            match self
                .node
                .with_stream(|s, _| Ok((after(s, &filter, last)?, s.last)))
            {
                Ok((entries, last)) => {
                    self.last = last;
                    self.queue.extend(
                        entries
                            .into_iter()
                            .map(|entry| line(&WatchLine::Entry(Delivered { entry, pending: 0 }))),
                    );
                }
                Err(_) => {
                    self.done = true;
                    self.queue
                        .push_back(line(&WatchLine::End("consumer deleted".into())));
                }
            }
        }
    }
}

/// `POST /v1/kv/watch`: the listing, then every later write, as JSON lines.
async fn watch(State(node): State<Arc<KvNode>>, Json(req): Json<WatchRequest>) -> Response {
    // Subscribed before listing, so a write in between is not missed.
    let changes = node.changes.subscribe();
    let listed = node.with_stream(|s, _| Ok((latest(s, &req.filter), s.last)));
    let (entries, last) = match listed {
        Ok(listed) => listed,
        Err(failure) => return failure.into_response(),
    };
    let mut queue = VecDeque::with_capacity(entries.len() + 1);
    queue.push_back(line(&WatchLine::Start(entries.len() as u64)));
    let n = entries.len() as u64;
    for (i, entry) in entries.into_iter().enumerate() {
        let pending = n - 1 - i as u64;
        queue.push_back(line(&WatchLine::Entry(Delivered { entry, pending })));
    }
    let follow = Follow {
        node,
        filter: req.filter,
        last,
        queue,
        changes,
        done: false,
    };
    axum::body::Body::from_stream(futures::stream::unfold(follow, Follow::next)).into_response()
}

async fn handle(State(node): State<Arc<KvNode>>, Json(req): Json<Request>) -> Response {
    match node.answer(req) {
        Ok(answer) => Json(answer).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// Wakes every waiting poll.
trait Wake {
    fn send_modify_wake(&self);
}

impl Wake for watch::Sender<u64> {
    fn send_modify_wake(&self) {
        self.send_if_modified(|n| {
            *n += 1;
            true
        });
    }
}
