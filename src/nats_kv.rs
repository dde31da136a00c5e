//! A NATS key-value bucket bound or created, for the registry and the
//! worker's job records.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::rt;

/// A bucket's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket<'a> {
    /// Its name.
    pub name: &'a str,
    /// What it holds.
    pub description: &'a str,
    /// Values kept per key.
    pub history: i64,
    /// Age at which values go (zero: never).
    pub max_age: Duration,
    /// Longest wait for each request.
    pub timeout: Duration,
}

/// Binds to the bucket, creating it if missing (tolerating a racing
/// creator). The error names the step that failed.
///
/// # Errors
/// The server is unreachable or refuses.
pub async fn bind_or_create(
    js: &jetstream::Context,
    bucket: &Bucket<'_>,
) -> Result<kv::Store, String> {
    let timeout = bucket.timeout;
    if let Ok(Ok(store)) = rt::timeout(timeout, js.get_key_value(bucket.name)).await {
        return Ok(store);
    }
    // The stream a KV bucket is, spelled out: `create_key_value` first asks
    // for the account info, which async-nats 0.51 cannot parse from 2.9
    // servers (no `reserved_memory`).
    let config = stream::Config {
        name: format!("KV_{}", bucket.name),
        description: Some(bucket.description.to_owned()),
        subjects: vec![format!("$KV.{}.>", bucket.name)],
        max_messages_per_subject: bucket.history,
        max_age: bucket.max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    let created = match rt::timeout(timeout, js.create_stream(config)).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("creating the bucket: {e}")),
        Err(e) => Some(format!("creating the bucket: {e}")),
    };
    match rt::timeout(timeout, js.get_key_value(bucket.name)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(created.unwrap_or_else(|| format!("binding the bucket: {e}"))),
        Err(e) => Err(created.unwrap_or_else(|| format!("binding the bucket: {e}"))),
    }
}
