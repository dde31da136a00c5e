//! A service registry on a NATS JetStream key-value bucket: the one that runs
//! for real on these machines, and the default in microservices mode.
//!
//! Layout: one key per instance, `<name>.<id>` (see [`view::token`] for the
//! encoding), holding JSON of the [`ServiceInfo`] and the last heartbeat.
//! Register is a put, deregister a delete (gone from discovery at once),
//! heartbeat a compare-and-set put that answers [`RegistryError::NotFound`]
//! when the key is gone, so the kernel registers again. A heartbeat writes
//! at the revision this process last wrote (one round trip); only if that
//! is refused does it read the key to learn why. A deleted bucket is
//! created again by the next call that finds it missing.
//!
//! Health: an entry passes while the server's timestamp of its last write
//! is younger than `check.ttl_expiry()`, compared with this process's wall
//! clock ([`rt::unix_ms`]). The server stamps every write, so writers' clocks
//! do not matter and one clock judges all instances; skew between reader and
//! server shifts the expiry by the skew (a write stamped in the reader's
//! future counts as fresh). Entries critical for `deregister_critical_after`
//! are deleted (compare-and-set, so a racing heartbeat wins) by whoever reads
//! them first: discover, watch or the instance's own heartbeat. The bucket's
//! `max_age` is the backstop for entries nobody reads, and old delete markers.
//!
//! Reads: discover lists the service's keys and gets each (no server-side
//! state, about a millisecond). A blocking watch opens an ordered consumer on
//! `<name>.*` and wakes on a write that changes the healthy set (heartbeats of
//! passing instances do not) or at the next expiry; its index is the latest
//! revision under `<name>.*`, heartbeats included.
//!
//! Only TTL checks: the bucket cannot probe HTTP endpoints, so HTTP checks are
//! refused as invalid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{CheckKind, Registry, RegistryError, ServiceInfo, WatchResult, validate};
use crate::rt;

pub mod bucket;
pub mod http;
#[cfg(not(madsim))]
mod nats;
mod options;
pub mod view;
mod watch;
pub use watch::WATCH_CUT;

use bucket::{Bucket, KvError, Op};
#[cfg(not(madsim))]
pub use nats::NatsBucket;
pub use options::Options;
use view::{Record, Slot, View, key, token};

/// Compare-and-set attempts of one heartbeat before giving up.
const HEARTBEAT_ATTEMPTS: usize = 3;

/// The property counted (in the simulator's report) when a heartbeat's
/// compare-and-set at the revision this process last wrote is refused: a
/// wipe, a re-registration, the reaper, or an earlier write that the
/// server applied while its answer was lost to a restart or a partition.
/// The key is then read back and written at its revision.
pub const HEARTBEAT_CAS_REFUSED: &str =
    "nats-kv: a heartbeat's compare-and-set refused, the key read back";

/// A [`Registry`] on a NATS JetStream key-value bucket.
pub struct NatsKvRegistry {
    opts: Options,
    bucket: Arc<dyn Bucket>,
    /// The bucket's actual `max_age` (it may predate our options).
    max_age: Duration,
    /// What this process registered under each id: a hint that saves a
    /// lookup per heartbeat (a key missing under it is `NotFound`).
    names: Mutex<HashMap<String, Mine>>,
}

/// An instance this process registered: its name, and its record with the
/// revision this process last wrote it at. A heartbeat is then one
/// compare-and-set write (one round trip); only when someone else wrote
/// the key since does it read the key first.
#[derive(Debug, Clone)]
struct Mine {
    name: String,
    last: Option<(Record, u64)>,
}

impl std::fmt::Debug for NatsKvRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsKvRegistry")
            .field("opts", &self.opts)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("nats kv: {what}: {err}"))
}

impl NatsKvRegistry {
    /// Connects to `opts.url` and creates the bucket, or binds to it if it exists.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for bad options, [`RegistryError::Unavailable`]
    /// when the server cannot be reached (within `connect_timeout`) or refuses.
    #[cfg(not(madsim))]
    pub async fn connect(opts: Options) -> Result<Self, RegistryError> {
        opts.validate()?;
        let bucket = NatsBucket::connect(&opts)
            .await
            .map_err(|e| RegistryError::Unavailable(format!("nats kv: {e}")))?;
        Self::on(opts, Arc::new(bucket)).await
    }

    /// The registry on `bucket` (already bound; `opts` give its name and
    /// the request timeout).
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for bad options, [`RegistryError::Unavailable`]
    /// when the bucket's settings cannot be read.
    pub async fn on(opts: Options, bucket: Arc<dyn Bucket>) -> Result<Self, RegistryError> {
        opts.validate()?;
        let status = rt::timeout(opts.request_timeout, bucket.status())
            .await
            .map_err(|e| unavailable("bucket status", e))?
            .map_err(|e| unavailable("bucket status", e))?;
        let max_age = Duration::from_millis(status.max_age_ms);
        if max_age != opts.max_age || status.history != opts.history {
            tracing::warn!(
                bucket = %opts.bucket,
                ?max_age,
                history = status.history,
                "bucket exists with other settings; using it as it is"
            );
        }
        Ok(Self {
            opts,
            bucket,
            max_age,
            names: Mutex::new(HashMap::new()),
        })
    }

    /// The registry on `bucket`, taking its settings to be `opts`' (as
    /// when the caller made the bucket with them): no call to the server.
    ///
    /// # Errors
    /// [`RegistryError::Invalid`] for bad options.
    pub fn assuming(opts: Options, bucket: Arc<dyn Bucket>) -> Result<Self, RegistryError> {
        opts.validate()?;
        Ok(Self {
            max_age: opts.max_age,
            opts,
            bucket,
            names: Mutex::new(HashMap::new()),
        })
    }

    /// The options it was connected with.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mine>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a failed heartbeat read of `id`: NotFound if the bucket was
    /// gone (re-created now, without the registration), else Unavailable.
    async fn lost_or_unavailable(&self, id: &str, e: impl std::fmt::Display) -> RegistryError {
        match self.ensure_bucket().await {
            Ok(true) => RegistryError::NotFound(id.to_owned()),
            Ok(false) => unavailable("heartbeat", e),
            Err(err) => err,
        }
    }

    /// Re-creates the bucket if it is gone (the server lost its data or
    /// someone deleted it); `true` if it had to. Fails fast while
    /// disconnected, where a request would only time out.
    async fn ensure_bucket(&self) -> Result<bool, RegistryError> {
        rt::timeout(self.opts.request_timeout, self.bucket.ensure())
            .await
            .map_err(|e| unavailable("bucket status", e))?
            .map_err(|e| unavailable("bucket status", e))
    }

    /// The keys that hold (or held) instance `id`, under any name.
    async fn keys_of(&self, id: &str) -> Result<Vec<String>, RegistryError> {
        let filter = format!("*.{}", token(id));
        rt::timeout(self.opts.request_timeout, self.bucket.keys(&filter))
            .await
            .map_err(|e| unavailable("looking up an id", e))?
            .map_err(|e| unavailable("looking up an id", e))
    }

    /// The key `id` lives under now, if any.
    async fn find(&self, id: &str) -> Result<Option<String>, RegistryError> {
        let hint = self.names().get(id).map(|mine| key(&mine.name, id));
        if hint.is_some() {
            return Ok(hint);
        }
        Ok(self.keys_of(id).await?.into_iter().next())
    }

    async fn put(&self, key: &str, record: &Record) -> Result<u64, RegistryError> {
        let value =
            serde_json::to_vec(record).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        rt::timeout(
            self.opts.request_timeout,
            self.bucket.put(key, value.into()),
        )
        .await
        .map_err(|e| unavailable("put", e))?
        .map_err(|e| unavailable("put", e))
    }

    /// Deletes `key` if it is still at `revision` (best effort: a failure
    /// means someone wrote it since, or the next reader retries).
    async fn remove_critical(&self, key: &str, revision: u64) {
        let deleting = self.bucket.delete(key, Some(revision));
        match rt::timeout(self.opts.request_timeout, deleting).await {
            Ok(Ok(())) => tracing::info!(%key, "critical registration removed"),
            Ok(Err(e)) => tracing::debug!(%key, error = %e, "critical registration not removed"),
            Err(e) => tracing::debug!(%key, error = %e, "critical registration not removed"),
        }
    }

    async fn reap(&self, view: &View, now_ms: u64) {
        for (key, revision) in view.removable(now_ms) {
            self.remove_critical(&key, revision).await;
        }
    }
}

#[async_trait]
impl Registry for NatsKvRegistry {
    async fn register(&self, info: &ServiceInfo) -> Result<(), RegistryError> {
        validate(info)?;
        if !matches!(info.check.kind, CheckKind::Ttl) {
            return Err(RegistryError::Invalid(
                "the NATS KV registry supports TTL checks only".into(),
            ));
        }
        if !self.max_age.is_zero() && info.check.ttl_expiry() > self.max_age {
            return Err(RegistryError::Invalid(format!(
                "TTL expiry {:?} exceeds the bucket's max_age {:?}",
                info.check.ttl_expiry(),
                self.max_age
            )));
        }
        let key = key(&info.name, &info.id);
        let record = Record {
            info: info.clone(),
            heartbeat_unix_ms: rt::unix_ms(),
        };
        let revision = match self.put(&key, &record).await {
            Ok(revision) => revision,
            Err(e) => {
                if !self.ensure_bucket().await? {
                    return Err(e);
                }
                self.put(&key, &record).await?
            }
        };
        let mine = Mine {
            name: info.name.clone(),
            last: Some((record, revision)),
        };
        self.names().insert(info.id.clone(), mine);
        // Registering an id under a new name replaces the old registration
        // (best effort: the registration itself has succeeded).
        let others = match self.keys_of(&info.id).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(id = %info.id, error = %e, "stale keys of the id not looked up");
                Vec::new()
            }
        };
        for other in others.iter().filter(|k| **k != key) {
            if let Err(e) = self.remove_any(other).await {
                tracing::warn!(key = %other, error = %e, "stale key of the id not removed");
            }
        }
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        self.names().remove(id);
        for key in self.keys_of(id).await? {
            self.remove_any(&key).await?;
        }
        Ok(())
    }

    async fn heartbeat(&self, id: &str) -> Result<(), RegistryError> {
        let not_found = || RegistryError::NotFound(id.to_owned());
        let key = self.find(id).await?.ok_or_else(not_found)?;
        if let Some(done) = self.quick_heartbeat(id, &key).await {
            return done;
        }
        for _ in 0..HEARTBEAT_ATTEMPTS {
            let entry = match rt::timeout(self.opts.request_timeout, self.bucket.entry(&key)).await
            {
                Ok(Ok(Some(entry))) if entry.op == Op::Put => entry,
                Ok(Ok(_)) => return Err(not_found()),
                // A lost bucket lost the registration with it. A direct get
                // on a missing stream waits out the request timeout (no
                // responders), and so races this timeout of the same
                // length: whichever fires first, look at the bucket.
                Ok(Err(e)) => return Err(self.lost_or_unavailable(id, e).await),
                Err(e) => return Err(self.lost_or_unavailable(id, e).await),
            };
            let Some(mut record) = Record::parse(&key, &entry.value) else {
                return Err(not_found());
            };
            let slot = Slot {
                revision: entry.revision,
                written_unix_ms: entry.written_unix_ms,
                record: Some(record.clone()),
            };
            if slot.removal_due(rt::unix_ms()) {
                self.remove_critical(&key, entry.revision).await;
                return Err(not_found());
            }
            record.heartbeat_unix_ms = rt::unix_ms();
            let value =
                serde_json::to_vec(&record).map_err(|e| RegistryError::Invalid(e.to_string()))?;
            let update = self.bucket.update(&key, value.into(), entry.revision);
            match rt::timeout(self.opts.request_timeout, update).await {
                Ok(Ok(revision)) => {
                    self.remember(id, record, revision);
                    return Ok(());
                }
                Ok(Err(KvError::WrongRevision)) => {}
                Ok(Err(e)) => return Err(unavailable("heartbeat", e)),
                Err(e) => return Err(unavailable("heartbeat", e)),
            }
        }
        Err(unavailable("heartbeat", "the entry kept changing"))
    }

    async fn confirm(&self, id: &str) -> Result<(), RegistryError> {
        let not_found = || RegistryError::NotFound(id.to_owned());
        let key = self.find(id).await?.ok_or_else(not_found)?;
        match rt::timeout(self.opts.request_timeout, self.bucket.entry(&key)).await {
            Ok(Ok(Some(entry))) if entry.op == Op::Put => Ok(()),
            Ok(Ok(_)) => Err(not_found()),
            Ok(Err(e)) => Err(self.lost_or_unavailable(id, e).await),
            Err(e) => Err(self.lost_or_unavailable(id, e).await),
        }
    }

    async fn discover(&self, name: &str) -> Result<Vec<ServiceInfo>, RegistryError> {
        let view = self.list_retrying(name).await?;
        let now_ms = rt::unix_ms();
        self.reap(&view, now_ms).await;
        Ok(view.healthy(now_ms))
    }

    async fn watch(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<WatchResult, RegistryError> {
        self.blocking_watch(name, index, wait).await
    }

    async fn health(&self) -> Result<(), RegistryError> {
        self.ensure_bucket().await.map(|_| ())
    }
}

impl NatsKvRegistry {
    /// The heartbeat's one-write path: a compare-and-set at the revision
    /// this process last wrote. `None` if it has none or the write was
    /// refused (someone else wrote the key, or it is gone with its bucket):
    /// the caller then reads the key to find out which. A server that does
    /// not answer in time fails the heartbeat at once.
    async fn quick_heartbeat(&self, id: &str, key: &str) -> Option<Result<(), RegistryError>> {
        let (mut record, revision) = self.names().get(id).and_then(|m| m.last.clone())?;
        record.heartbeat_unix_ms = rt::unix_ms();
        let value = serde_json::to_vec(&record).ok()?;
        let update = self.bucket.update(key, value.into(), revision);
        match rt::timeout(self.opts.request_timeout, update).await {
            Ok(Ok(revision)) => {
                self.remember(id, record, revision);
                Some(Ok(()))
            }
            Ok(Err(_)) if rt::faults::injected(rt::faults::Bug::KvHeartbeatTrustsItsCache) => {
                Some(Ok(()))
            }
            Ok(Err(_)) => {
                rt::coverage::hit(HEARTBEAT_CAS_REFUSED);
                None
            }
            Err(e) => Some(Err(unavailable("heartbeat", e))),
        }
    }

    /// Notes what this process last wrote under `id`.
    fn remember(&self, id: &str, record: Record, revision: u64) {
        if let Some(mine) = self.names().get_mut(id) {
            mine.last = Some((record, revision));
        }
    }

    /// Deletes `key` whatever its revision (deregistration).
    async fn remove_any(&self, key: &str) -> Result<(), RegistryError> {
        rt::timeout(self.opts.request_timeout, self.bucket.delete(key, None))
            .await
            .map_err(|e| unavailable("delete", e))?
            .map_err(|e| unavailable("delete", e))
    }
}
