//! The [`Bucket`] seam on a real NATS server, through async-nats.

use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

use super::Options;
use super::bucket::{Bucket, Delivered, Entry, KvError, Op, Status, Watch};
use crate::rt;

/// A bucket of a NATS server's JetStream.
pub struct NatsBucket {
    client: async_nats::Client,
    js: jetstream::Context,
    store: kv::Store,
    name: String,
    description: String,
    history: i64,
    max_age: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for NatsBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBucket")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("{what}: {err}"))
}

impl NatsBucket {
    /// Connects to `opts.url` and binds to the registry bucket, creating it
    /// if missing.
    ///
    /// # Errors
    /// A description of what failed: bad credentials, an unreachable
    /// server (within `connect_timeout`), a refusal.
    pub async fn connect(opts: &Options) -> Result<Self, String> {
        let connect = async_nats::ConnectOptions::new()
            .connection_timeout(opts.connect_timeout)
            .request_timeout(Some(opts.request_timeout));
        let connecting = opts.auth.apply(connect).await?.connect(opts.url.as_str());
        let client = rt::timeout(opts.connect_timeout, connecting)
            .await
            .map_err(|e| format!("connecting to {}: {e}", opts.url))?
            .map_err(|e| format!("connecting to {}: {e}", opts.url))?;
        let settings = crate::nats_kv::Bucket {
            name: &opts.bucket,
            description: "StreamGate service registry",
            history: opts.history,
            max_age: opts.max_age,
            timeout: opts.request_timeout,
        };
        Self::bind(client, &settings).await
    }

    /// Binds to the bucket `settings` names on `client`'s server, creating
    /// it if missing.
    ///
    /// # Errors
    /// A description of what failed.
    pub async fn bind(
        client: async_nats::Client,
        settings: &crate::nats_kv::Bucket<'_>,
    ) -> Result<Self, String> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.timeout);
        let store = crate::nats_kv::bind_or_create(&js, settings).await?;
        Ok(Self {
            client,
            js,
            store,
            name: settings.name.to_owned(),
            description: settings.description.to_owned(),
            history: settings.history,
            max_age: settings.max_age,
            timeout: settings.timeout,
        })
    }
}

/// The server's timestamp as Unix milliseconds.
#[allow(clippy::disallowed_types)] // converts a timestamp; reads no clock
fn unix_ms_of(at: impl Into<std::time::SystemTime>) -> u64 {
    at.into()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn op_of(op: Operation) -> Op {
    match op {
        Operation::Put => Op::Put,
        Operation::Delete => Op::Delete,
        Operation::Purge => Op::Purge,
    }
}

/// A delivered watch message as an entry: the KV operation header (or a
/// server marker's reason) decides whether it is a marker.
fn delivered(prefix: &str, msg: &jetstream::Message) -> Option<Delivered> {
    let info = match msg.info() {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(error = %e, "registry message without metadata skipped");
            return None;
        }
    };
    let key = msg.subject.strip_prefix(prefix)?.to_owned();
    let headers = msg.headers.as_ref();
    let op = headers
        .and_then(|h| h.get("KV-Operation"))
        .and_then(|op| op.as_str().parse::<Operation>().ok())
        .map_or(Op::Put, op_of);
    let op = match headers.and_then(|h| h.get("Nats-Marker-Reason")) {
        Some(reason) if reason.as_str() == "Purge" => Op::Purge,
        Some(_) => Op::Delete,
        None => op,
    };
    let value = if op == Op::Put {
        msg.payload.clone()
    } else {
        Bytes::new()
    };
    Some(Delivered {
        entry: Entry {
            key,
            value,
            revision: info.stream_sequence,
            written_unix_ms: unix_ms_of(info.published),
            op,
        },
        pending: info.pending,
    })
}

/// Deletes an ephemeral consumer in the background once its watch is
/// dropped (the server would otherwise keep it for its 30 s inactivity
/// threshold).
struct DropConsumer {
    stream: jetstream::stream::Stream,
    name: String,
    timeout: Duration,
}

impl Drop for DropConsumer {
    fn drop(&mut self) {
        let (stream, name, timeout) = (
            self.stream.clone(),
            std::mem::take(&mut self.name),
            self.timeout,
        );
        drop(rt::spawn(async move {
            if let Ok(Err(e)) = rt::timeout(timeout, stream.delete_consumer(&name)).await {
                tracing::debug!(consumer = %name, error = %e, "watch consumer not deleted");
            }
        }));
    }
}

#[async_trait]
impl Bucket for NatsBucket {
    async fn status(&self) -> Result<Status, KvError> {
        let status = self
            .store
            .status()
            .await
            .map_err(|e| unavailable("bucket status", e))?;
        Ok(Status {
            max_age_ms: u64::try_from(status.max_age().as_millis()).unwrap_or(u64::MAX),
            history: status.history(),
        })
    }

    async fn ensure(&self) -> Result<bool, KvError> {
        let state = self.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(unavailable("server", format!("not connected ({state})")));
        }
        let stream = format!("KV_{}", self.name);
        match rt::timeout(self.timeout, self.js.get_stream(&stream)).await {
            Err(e) => Err(unavailable("bucket status", e)),
            Ok(Ok(_)) => Ok(false),
            Ok(Err(e)) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    tracing::warn!(bucket = %self.name, "bucket gone; creating it again");
                    let settings = crate::nats_kv::Bucket {
                        name: &self.name,
                        description: &self.description,
                        history: self.history,
                        max_age: self.max_age,
                        timeout: self.timeout,
                    };
                    crate::nats_kv::bind_or_create(&self.js, &settings)
                        .await
                        .map_err(KvError::Unavailable)?;
                    Ok(true)
                }
                _ => Err(unavailable("bucket status", e)),
            },
        }
    }

    async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|e| unavailable("get", e))?;
        Ok(entry.map(|e| Entry {
            key: key.to_owned(),
            value: e.value,
            revision: e.revision,
            written_unix_ms: unix_ms_of(e.created),
            op: op_of(e.operation),
        }))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.store
            .put(key, value)
            .await
            .map_err(|e| unavailable("put", e))
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError> {
        match self.store.update(key, value, revision).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(KvError::WrongRevision),
            Err(e) => Err(unavailable("update", e)),
        }
    }

    async fn delete(&self, key: &str, expect: Option<u64>) -> Result<(), KvError> {
        self.store
            .delete_expect_revision(key, expect)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::WrongRevision,
                _ => unavailable("delete", e),
            })
    }

    async fn keys(&self, filter: &str) -> Result<Vec<String>, KvError> {
        let subjects = self
            .store
            .stream
            .info_with_subjects(format!("{}{filter}", self.store.prefix))
            .await
            .map_err(|e| unavailable("listing", e))?;
        let subjects: Vec<String> = subjects
            .map_ok(|(subject, _)| subject)
            .try_collect()
            .await
            .map_err(|e| unavailable("listing", e))?;
        Ok(subjects
            .iter()
            .filter_map(|s| s.strip_prefix(self.store.prefix.as_str()))
            .map(str::to_owned)
            .collect())
    }

    async fn watch(&self, filter: &str) -> Result<Watch, KvError> {
        let config = OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            description: Some("streamgate registry watch".to_owned()),
            filter_subject: format!("{}{filter}", self.store.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        };
        let consumer = self
            .store
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable("watch", e))?;
        let pending = consumer.cached_info().num_pending;
        let guard = DropConsumer {
            stream: self.store.stream.clone(),
            name: consumer.cached_info().name.clone(),
            timeout: self.timeout,
        };
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("watch", e))?;
        let prefix = self.store.prefix.clone();
        let entries = messages
            .filter_map(move |msg| {
                // The guard lives as long as the stream.
                let _held = &guard;
                let item = match msg {
                    Ok(msg) => delivered(&prefix, &msg).map(Ok),
                    Err(e) => Some(Err(unavailable("watch", e))),
                };
                std::future::ready(item)
            })
            .boxed();
        Ok(Watch { pending, entries })
    }
}
