//! The seam under the NATS KV registry: what it uses of a JetStream
//! key-value bucket, and nothing more. async-nats serves it in production
//! ([`super::nats`]); in the simulator a modelled server node does, reached
//! over madsim's network ([`super::http::HttpBucket`], the model in
//! `streamgate_testkit::kv_node`). One contract
//! (`streamgate_testkit::kv_contract`) runs against both, so the model
//! answers as the real server does.
//!
//! Keys are bucket keys (`<name>.<id>`, no `$KV.<bucket>.` prefix); filters
//! are key patterns with NATS wildcards (`name.*`, `*.id`).

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// What a write left under a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A value.
    Put,
    /// A delete marker.
    Delete,
    /// A purge marker (the key's history removed).
    Purge,
}

/// The latest write of a key, as the server stored it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value (empty for a marker).
    #[serde(with = "serde_bytes_b64")]
    pub value: Bytes,
    /// The bucket's revision of the write: its stream sequence, shared by
    /// every key of the bucket and increasing.
    pub revision: u64,
    /// The server's timestamp of the write, in Unix milliseconds.
    pub written_unix_ms: u64,
    /// What the write was.
    pub op: Op,
}

/// A bucket's settings as the server holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Age at which values go, in milliseconds (zero: never).
    pub max_age_ms: u64,
    /// Values kept per key.
    pub history: i64,
}

/// Why a bucket call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A conditional write found another revision under the key.
    #[error("wrong last revision")]
    WrongRevision,
    /// The server, the bucket or the connection failed (a description).
    #[error("{0}")]
    Unavailable(String),
}

/// One entry a watch delivered, and how many more the server had queued
/// behind it when it was sent (0: the watch has caught up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The entry.
    pub entry: Entry,
    /// Entries still queued behind it.
    pub pending: u64,
}

/// A watch: first the latest entry of every key under the filter
/// (`pending` of them), then every later write, in revision order. Dropping
/// it releases whatever the server keeps for it.
pub struct Watch {
    /// How many entries the initial listing holds.
    pub pending: u64,
    /// The entries; an `Err` or the end means the watch is over.
    pub entries: BoxStream<'static, Result<Delivered, KvError>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// A key-value bucket on a server. Callers bound each call's time.
#[async_trait]
pub trait Bucket: Send + Sync + 'static {
    /// The bucket's settings.
    async fn status(&self) -> Result<Status, KvError>;
    /// Creates the bucket again if it is gone; `true` if it had to. Fails
    /// fast when the server is not reachable.
    async fn ensure(&self) -> Result<bool, KvError>;
    /// The latest entry of `key`, markers included; `None` if it has none.
    async fn entry(&self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Writes `value`; its revision.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError>;
    /// Writes `value` if the key's latest revision is `revision` (0: the
    /// key has never been written or was purged); its new revision.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, KvError>;
    /// Leaves a delete marker, if `expect` is `None` or the key's latest
    /// revision.
    async fn delete(&self, key: &str, expect: Option<u64>) -> Result<(), KvError>;
    /// Every key under `filter` that holds a write or a marker.
    async fn keys(&self, filter: &str) -> Result<Vec<String>, KvError>;
    /// Watches the keys under `filter`.
    async fn watch(&self, filter: &str) -> Result<Watch, KvError>;
}

/// `Bytes` as base64 in JSON (the model's wire format).
pub(crate) mod serde_bytes_b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether `key` is under `filter`: tokens split by `.`, `*` matches one
/// token and a final `>` the rest (NATS subject matching).
#[must_use]
pub fn matches(filter: &str, key: &str) -> bool {
    let mut keys = key.split('.');
    for part in filter.split('.') {
        if part == ">" {
            return keys.next().is_some();
        }
        match keys.next() {
            Some(k) if part == "*" || part == k => {}
            _ => return false,
        }
    }
    keys.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_nats_subjects_do() {
        assert!(matches("svc.*", "svc.a"));
        assert!(!matches("svc.*", "svc.a.b"));
        assert!(!matches("svc.*", "svcx.a"));
        assert!(matches("*.id", "svc.id"));
        assert!(!matches("*.id", "svc.idx"));
        assert!(matches("svc.>", "svc.a.b"));
        assert!(!matches("svc.>", "svc"));
    }

    #[test]
    fn entries_round_trip_through_json() {
        let entry = Entry {
            key: "a.b".into(),
            value: Bytes::from_static(b"\x00\xffvalue"),
            revision: 7,
            written_unix_ms: 12,
            op: Op::Put,
        };
        let json = serde_json::to_string(&entry).expect("serialises");
        assert_eq!(serde_json::from_str::<Entry>(&json).expect("parses"), entry);
    }
}
