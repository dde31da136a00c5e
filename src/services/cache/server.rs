//! CacheService over gRPC: validates input, runs it on the cache state;
//! refusals are [`CacheError`]s (`error.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::state::{CacheState, Limits};
use crate::proto::cache_service_server::CacheService;
use crate::proto::{
    CacheDeleteRequest, CacheDeleteResponse, CacheGetRequest, CacheGetResponse,
    CacheInvalidateRequest, CacheInvalidateResponse, CacheSetRequest, CacheSetResponse,
    CacheStatsRequest, CacheStatsResponse,
};
use crate::rt;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The gRPC face of one cache instance.
#[derive(Debug, Clone)]
pub struct CacheServer {
    state: Arc<Mutex<CacheState>>,
}

impl CacheServer {
    /// A cache with `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            state: Arc::new(Mutex::new(CacheState::new(limits))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut CacheState) -> T) -> T {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[tonic::async_trait]
impl CacheService for CacheServer {
    async fn get(
        &self,
        req: Request<CacheGetRequest>,
    ) -> Result<Response<CacheGetResponse>, Status> {
        let key = req.into_inner().key;
        let found = self.with(|s| s.get(&key, rt::now()))?;
        Ok(Response::new(match found {
            Some((value, left)) => CacheGetResponse {
                found: true,
                value: value.to_vec(),
                remaining_ttl_ms: millis(left),
            },
            None => CacheGetResponse::default(),
        }))
    }

    async fn set(
        &self,
        req: Request<CacheSetRequest>,
    ) -> Result<Response<CacheSetResponse>, Status> {
        let req = req.into_inner();
        let ttl = Duration::from_millis(req.ttl_ms);
        let now = rt::now();
        let (expires, evicted) = self.with(|s| s.set(&req.key, req.value.into(), ttl, now))?;
        let expires_at_ms = rt::unix_ms().saturating_add(millis(expires - now));
        Ok(Response::new(CacheSetResponse {
            expires_at_ms: i64::try_from(expires_at_ms).unwrap_or(i64::MAX),
            evicted_count: evicted,
        }))
    }

    async fn delete(
        &self,
        req: Request<CacheDeleteRequest>,
    ) -> Result<Response<CacheDeleteResponse>, Status> {
        let key = req.into_inner().key;
        let deleted = self.with(|s| s.delete(&key, rt::now()))?;
        Ok(Response::new(CacheDeleteResponse { deleted }))
    }

    async fn invalidate(
        &self,
        req: Request<CacheInvalidateRequest>,
    ) -> Result<Response<CacheInvalidateResponse>, Status> {
        let prefix = req.into_inner().prefix;
        let removed_count = self.with(|s| s.invalidate(&prefix, rt::now()))?;
        Ok(Response::new(CacheInvalidateResponse { removed_count }))
    }

    async fn stats(
        &self,
        _req: Request<CacheStatsRequest>,
    ) -> Result<Response<CacheStatsResponse>, Status> {
        let (entries, used_bytes, capacity_bytes, c) = self.with(|s| {
            s.expire(rt::now());
            s.stats()
        });
        Ok(Response::new(CacheStatsResponse {
            entries,
            used_bytes,
            capacity_bytes,
            hits: c.hits,
            misses: c.misses,
            evictions: c.evictions,
            expirations: c.expirations,
        }))
    }
}
