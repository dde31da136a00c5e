//! Read-through caching of single videos in the cache service. A video's
//! entry lives on the one cache instance that rendezvous hashing gives its
//! key, so every gateway reads, fills and invalidates the same copy. The
//! cache only ever saves work: when it fails, is slow or has no instance,
//! the read goes to metadata, never to an error.

use std::future::Future;
use std::time::Duration;

use prost::Message as _;
use tonic::Status;

use super::error::ApiError;
use crate::bus::events::{MetadataDeleted, MetadataUpdated, Payload as _};
use crate::bus::{BusError, EventType, Subscription, handler};
use crate::kernel::Runtime;
use crate::proto::{CacheDeleteRequest, CacheGetRequest, CacheSetRequest, GetVideoRequest, Video};
use crate::rt;
use crate::services::media;

/// How long a cached video may be served. It bounds the staleness left by
/// a lost invalidation (core NATS is at-most-once) or by a fill racing an
/// update from another client.
pub const TTL: Duration = Duration::from_secs(30);

/// The deadline of each cache call (`grpc-timeout`): the pool ends a call
/// still waiting then as DEADLINE_EXCEEDED, which the instance's breaker
/// counts, so a silent cache instance is soon skipped without waiting.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(150);

/// The whole budget of one cache operation, finding the instance included;
/// past it the request goes on without the cache.
pub const BUDGET: Duration = Duration::from_millis(200);

/// Queue group of the gateways' invalidation consumers. The cache is shared,
/// so one delete per event suffices: one gateway of the group takes each
/// event. (A cache kept inside each gateway would need every gateway to see
/// every event: no group.)
pub const GROUP: &str = "api-gateway";

/// The cache key of a video. `v1` names the value's encoding (a prost
/// `Video`): a new encoding takes a new prefix, never misreads old entries.
#[must_use]
pub fn key(video_id: &str) -> String {
    format!("video:v1:{video_id}")
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Runs one cache operation within [`BUDGET`].
async fn bounded<T>(op: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    rt::timeout(BUDGET, op)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("cache budget elapsed")))
}

/// What the cache had.
enum Lookup {
    Hit(Box<Video>),
    Miss,
    /// The cache could not answer (error, timeout, no instance).
    Failed,
}

async fn lookup(runtime: &Runtime, video_id: &str, key: &str) -> Lookup {
    let get = async {
        let mut cache = runtime.pool.cache_for_key(key).await?;
        let req = with_deadline(CacheGetRequest {
            key: key.to_owned(),
        });
        Ok(cache.get(req).await?.into_inner())
    };
    match bounded(get).await {
        Ok(res) if res.found => match Video::decode(res.value.as_slice()) {
            Ok(video) if video.id == video_id => Lookup::Hit(Box::new(video)),
            // Written over by the fill that follows.
            Ok(_) | Err(_) => {
                tracing::warn!(key = %key, "cache entry is not this video; ignored");
                Lookup::Miss
            }
        },
        Ok(_) => Lookup::Miss,
        Err(e) => {
            tracing::debug!(key = %key, error = %e, "cache lookup failed; reading metadata");
            Lookup::Failed
        }
    }
}

/// Stores `video` under `key` for [`TTL`]. Awaited (within the budget)
/// before the answer goes out, so that a client's own update after this
/// read invalidates after the fill, never before it.
async fn fill(runtime: &Runtime, key: String, video: &Video) {
    let set = async {
        let mut cache = runtime.pool.cache_for_key(&key).await?;
        let req = with_deadline(CacheSetRequest {
            key: key.clone(),
            value: video.encode_to_vec(),
            ttl_ms: u64::try_from(TTL.as_millis()).unwrap_or(u64::MAX),
        });
        cache.set(req).await.map(drop)
    };
    if let Err(e) = bounded(set).await {
        tracing::debug!(key = %key, error = %e, "cache fill failed");
    }
}

/// The video `video_id`: from the cache, else from metadata (then cached).
///
/// # Errors
/// Metadata's, as for an uncached read.
pub async fn video(runtime: &Runtime, video_id: String) -> Result<Video, ApiError> {
    let key = key(&video_id);
    let found = lookup(runtime, &video_id, &key).await;
    let outcome = match found {
        Lookup::Hit(_) => "hit",
        Lookup::Miss => "miss",
        Lookup::Failed => "fallback",
    };
    runtime.metrics.cache_read(outcome);
    if let Lookup::Hit(video) = found {
        return Ok(*video);
    }
    let res = runtime
        .pool
        .metadata()
        .await?
        .get_video(GetVideoRequest { video_id })
        .await?;
    let video = res.into_inner().video.ok_or_else(|| {
        ApiError::new(http::StatusCode::BAD_GATEWAY, "metadata returned no video")
    })?;
    // After a failed lookup a fill would most likely fail too: skip it.
    if matches!(found, Lookup::Miss) {
        fill(runtime, key, &video).await;
    }
    Ok(video)
}

/// Removes the cached copy of `video_id`, if any.
///
/// # Errors
/// The cache could not be reached in time; the entry (if any) then lives
/// out its [`TTL`].
pub async fn forget(runtime: &Runtime, video_id: &str) -> Result<(), Status> {
    let key = key(video_id);
    let delete = async {
        let mut cache = runtime.pool.cache_for_key(&key).await?;
        let req = with_deadline(CacheDeleteRequest { key: key.clone() });
        cache.delete(req).await.map(drop)
    };
    bounded(delete).await.inspect_err(|e| {
        tracing::warn!(key = %key, error = %e, "cache invalidation failed; the entry expires by its TTL");
    })
}

/// Follows MetadataUpdated and MetadataDeleted (in [`GROUP`]) and drops the
/// video's cached copy. MetadataCreated is not followed: only videos that
/// were found are cached, so a new one has nothing to drop.
///
/// # Errors
/// The bus refused a subscription.
pub async fn subscribe(runtime: &Runtime) -> Result<Vec<Subscription>, BusError> {
    let mut subscriptions = Vec::new();
    for kind in [EventType::MetadataUpdated, EventType::MetadataDeleted] {
        let for_handler = runtime.clone();
        let on_event = handler(move |event| {
            let runtime = for_handler.clone();
            async move {
                let video_id = match event.kind {
                    EventType::MetadataUpdated => MetadataUpdated::from_event(&event)?.video_id,
                    _ => MetadataDeleted::from_event(&event)?.video_id,
                };
                if !media::is_id(&video_id) {
                    return Err("video_id is not an id".into());
                }
                forget(&runtime, &video_id).await?;
                Ok(())
            }
        });
        subscriptions.push(
            runtime
                .bus
                .subscribe(kind.subject(), Some(GROUP), on_event)
                .await?,
        );
    }
    Ok(subscriptions)
}
