//! A model of a NATS server's JetStream work queue, the one the worker's
//! job store dispatches through, served over HTTP
//! ([`streamgate::services::worker::store::jetstream::http`]) so the
//! simulator can run it on a node of its own.
//!
//! Semantics follow the real server (checked by [`crate::queue_contract`]
//! against both):
//! - the stream takes subjects under its prefix, keeps at most one message
//!   per subject and `max_messages` in all, and refuses new ones past either
//!   limit (discard new);
//! - the consumer delivers a message to one caller at a time (messages
//!   due again first, then new ones by sequence), at most
//!   `max_ack_pending` unsettled at once; each delivery counts;
//! - an ack or a term removes the message (work-queue retention); a plain
//!   NAK makes it due at once; a NAK with a delay keeps it pending until
//!   the delay ends, and a zero delay until the ack wait ends (what
//!   nats-server 2.9 does); progress restarts the ack wait; a message left
//!   pending past its deadline is due again;
//! - a settlement names the message by its sequence: one for a message that
//!   is gone or not pending changes nothing;
//! - a purge removes a subject's message, delivered or not.
//!
//! Durability: the state lives in this value, outside any node, so a node
//! restart keeps it as JetStream's file storage does across a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use streamgate::registry::nats_kv::bucket::matches;
use streamgate::rt;
use streamgate::services::worker::store::jetstream::http::{Answer, PATH, Request};
use streamgate::services::worker::store::jetstream::queue::{Delivery, Published, Settle};

/// The stream's and the consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// The subjects the stream takes (`<name>.dispatch.*`).
    pub subjects: String,
    /// Most messages.
    pub max_messages: u64,
    /// How long a delivered message waits for its settlement.
    pub ack_wait_ms: u64,
    /// Most messages delivered and not settled.
    pub max_ack_pending: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Due from this time (0: never delivered).
    Ready(u64),
    /// Delivered; due again at this time.
    Pending(u64),
}

#[derive(Debug, Clone)]
struct Msg {
    subject: String,
    delivered: u64,
    due: Due,
}

#[derive(Debug, Default)]
struct Inner {
    last: u64,
    messages: BTreeMap<u64, Msg>,
    by_subject: HashMap<String, u64>,
}

/// The modelled server's work queue and its consumer.
#[derive(Debug)]
pub struct QueueNode {
    settings: QueueSettings,
    inner: Mutex<Inner>,
}

const ACK_PREFIX: &str = "$JS.ACK.model.";

impl QueueNode {
    /// An empty queue with these settings.
    #[must_use]
    pub fn new(settings: QueueSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The HTTP API ([`streamgate::services::worker::store::jetstream::http`]).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            .with_state(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, req: Request, now: u64) -> Result<Answer, String> {
        let mut inner = self.lock();
        let s = &self.settings;
        match req {
            Request::Publish { subject } => {
                if !matches(&s.subjects, &subject) {
                    return Err(format!("no stream matches subject {subject}"));
                }
                if inner.by_subject.contains_key(&subject) {
                    return Ok(Answer::Published(Published::AlreadyQueued));
                }
                if inner.messages.len() as u64 >= s.max_messages {
                    return Ok(Answer::Published(Published::Full));
                }
                inner.last += 1;
                let seq = inner.last;
                inner.by_subject.insert(subject.clone(), seq);
                let msg = Msg {
                    subject,
                    delivered: 0,
                    due: Due::Ready(0),
                };
                inner.messages.insert(seq, msg);
                Ok(Answer::Published(Published::Queued))
            }
            Request::Purge { subject } => {
                if let Some(seq) = inner.by_subject.remove(&subject) {
                    inner.messages.remove(&seq);
                }
                Ok(Answer::Purged)
            }
            Request::Fetch => Ok(Answer::Fetched(inner.fetch(s, now))),
            Request::Settle { reply, how } => {
                let seq = reply
                    .strip_prefix(ACK_PREFIX)
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|seq| seq.parse::<u64>().ok())
                    .ok_or_else(|| format!("not an ack subject: {reply}"))?;
                inner.settle(seq, how, s.ack_wait_ms, now);
                Ok(Answer::Settled)
            }
        }
    }
}

impl Inner {
    fn fetch(&mut self, s: &QueueSettings, now: u64) -> Option<Delivery> {
        let mut pending = 0;
        for msg in self.messages.values_mut() {
            match msg.due {
                Due::Pending(at) if at <= now => msg.due = Due::Ready(at),
                Due::Pending(_) => pending += 1,
                Due::Ready(_) => {}
            }
        }
        if pending >= s.max_ack_pending {
            return None;
        }
        // Messages due again first, in the order they came due; then new
        // ones by sequence.
        let (&seq, _) = self
            .messages
            .iter()
            .filter_map(|(seq, m)| match m.due {
                Due::Ready(at) if at <= now => Some((seq, (at == 0, at, *seq))),
                _ => None,
            })
            .min_by_key(|(_, order)| *order)?;
        let msg = self.messages.get_mut(&seq)?;
        msg.delivered += 1;
        msg.due = Due::Pending(now.saturating_add(s.ack_wait_ms));
        Some(Delivery {
            subject: msg.subject.clone(),
            reply: format!("{ACK_PREFIX}{seq}.{}", msg.delivered),
            delivered: msg.delivered,
        })
    }

    fn settle(&mut self, seq: u64, how: Settle, ack_wait_ms: u64, now: u64) {
        let Some(msg) = self.messages.get_mut(&seq) else {
            return;
        };
        let Due::Pending(_) = msg.due else {
            return;
        };
        match how {
            Settle::Ack | Settle::Term => {
                let subject = msg.subject.clone();
                self.messages.remove(&seq);
                self.by_subject.remove(&subject);
            }
            Settle::Nak(None) => msg.due = Due::Ready(now.max(1)),
            // Held until the ack wait ends, as by nats-server 2.9.
            Settle::Nak(Some(0)) => {}
            Settle::Nak(Some(delay)) => msg.due = Due::Pending(now.saturating_add(delay)),
            Settle::Progress => msg.due = Due::Pending(now.saturating_add(ack_wait_ms)),
        }
    }
}

async fn handle(State(node): State<Arc<QueueNode>>, Json(req): Json<Request>) -> Response {
    match node.answer(req, rt::unix_ms()) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
    }
}
