//! The service locator: a typed client getter per service, each a
//! balanced, layered channel from the pool ([`ClientPool::channel`]).

use super::pool::{ClientPool, PoolChannel, PoolError};
use crate::proto::auth_service_client::AuthServiceClient;
use crate::proto::cache_service_client::CacheServiceClient;
use crate::proto::metadata_service_client::MetadataServiceClient;
use crate::proto::monitor_service_client::MonitorServiceClient;
use crate::proto::streaming_service_client::StreamingServiceClient;
use crate::proto::transcoder_service_client::TranscoderServiceClient;
use crate::proto::upload_service_client::UploadServiceClient;
use crate::proto::worker_service_client::WorkerServiceClient;

macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident => $client:ident, $service:literal;)*) => {
        impl ClientPool {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                /// As [`ClientPool::channel`].
                pub async fn $name(&self) -> Result<$client<PoolChannel>, PoolError> {
                    Ok($client::new(self.channel($service).await?))
                }
            )*
        }
    };
}

getters! {
    /// A client of the upload service.
    upload => UploadServiceClient, "upload";
    /// A client of the streaming service.
    streaming => StreamingServiceClient, "streaming";
    /// A client of the metadata service.
    metadata => MetadataServiceClient, "metadata";
    /// A client of the auth service.
    auth => AuthServiceClient, "auth";
    /// A client of the cache service.
    cache => CacheServiceClient, "cache";
    /// A client of the transcoder service.
    transcoder => TranscoderServiceClient, "transcoder";
    /// A client of the worker service.
    worker => WorkerServiceClient, "worker";
    /// A client of the monitor service.
    monitor => MonitorServiceClient, "monitor";
}

impl ClientPool {
    /// A client of the cache instance that owns `key` (rendezvous hashing
    /// over the healthy instances; [`ClientPool::channel_for_key`]).
    ///
    /// # Errors
    /// As [`ClientPool::channel`].
    pub async fn cache_for_key(
        &self,
        key: &str,
    ) -> Result<CacheServiceClient<PoolChannel>, PoolError> {
        Ok(CacheServiceClient::new(
            self.channel_for_key("cache", key.as_bytes()).await?,
        ))
    }

    /// A client of the streaming instance that owns `video_id` (rendezvous
    /// hashing): viewing sessions live in one instance's memory, so a
    /// video's sessions start and stop on the same one.
    ///
    /// # Errors
    /// As [`ClientPool::channel`].
    pub async fn streaming_for_video(
        &self,
        video_id: &str,
    ) -> Result<StreamingServiceClient<PoolChannel>, PoolError> {
        Ok(StreamingServiceClient::new(
            self.channel_for_key("streaming", video_id.as_bytes())
                .await?,
        ))
    }
}
