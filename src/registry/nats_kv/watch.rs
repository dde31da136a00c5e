//! Reading one service's entries: a stateless listing (stream subjects, then
//! a direct get per key) for discovery, and an ordered consumer for blocking watches.

use std::time::Duration;

use futures::StreamExt as _;

use super::bucket::{Delivered, Entry, Op, Watch};
use super::view::{Record, Slot, View, token};
use super::{NatsKvRegistry, unavailable};
use crate::registry::{RegistryError, WatchResult};
use crate::rt;

/// The property counted (in the simulator's report) when a blocking
/// query's watch is cut by the server (a restart, a lost bucket): the
/// caller gets UNAVAILABLE and watches again.
pub const WATCH_CUT: &str = "nats-kv: a registry watch cut by the server";

/// Direct gets of one listing in flight at once.
const LISTING_CONCURRENCY: usize = 16;

/// The slot an entry makes.
fn slot_of(entry: &Entry) -> Slot {
    let record = match entry.op {
        Op::Put => Record::parse(&entry.key, &entry.value),
        Op::Delete | Op::Purge => None,
    };
    Slot {
        revision: entry.revision,
        written_unix_ms: entry.written_unix_ms,
        record,
    }
}

impl NatsKvRegistry {
    /// The key filter of every key of service `name`.
    fn filter(name: &str) -> String {
        format!("{}.*", token(name))
    }

    /// The latest entry of every key of `name`, read without server-side
    /// state: the keys under the filter, then a direct get each.
    async fn list(&self, name: &str) -> Result<View, RegistryError> {
        let listing = async {
            let keys = self
                .bucket
                .keys(&Self::filter(name))
                .await
                .map_err(|e| unavailable("listing", e))?;
            // Owned keys and bucket: the futures must not borrow (Send bounds).
            let mut gets = futures::stream::iter(keys)
                .map(|key: String| {
                    let bucket = self.bucket.clone();
                    async move { bucket.entry(&key).await }
                })
                .buffer_unordered(LISTING_CONCURRENCY);
            let mut view = View::default();
            while let Some(entry) = gets.next().await {
                // `None`: removed since it was listed.
                if let Some(entry) = entry.map_err(|e| unavailable("listing", e))? {
                    view.apply(entry.key.clone(), slot_of(&entry));
                }
            }
            Ok(view)
        };
        rt::timeout(self.opts.request_timeout, listing)
            .await
            .map_err(|e| unavailable("listing", e))?
    }

    /// [`Self::list`], once more after re-creating a lost bucket.
    pub(super) async fn list_retrying(&self, name: &str) -> Result<View, RegistryError> {
        match self.list(name).await {
            Ok(view) => Ok(view),
            Err(e) => {
                tracing::debug!(error = %e, "registry listing failed; retrying once");
                self.ensure_bucket().await?;
                self.list(name).await
            }
        }
    }

    /// Opens a watch on the latest entry of every key of `name` and reads
    /// them; the watch then delivers later changes.
    async fn open(&self, name: &str) -> Result<(View, Watch), RegistryError> {
        let deadline = rt::now() + self.opts.request_timeout;
        let mut watch = rt::timeout_at(deadline, self.bucket.watch(&Self::filter(name)))
            .await
            .map_err(|e| unavailable("watch", e))?
            .map_err(|e| unavailable("watch", e))?;
        let mut view = View::default();
        // Until the entry with nothing pending behind it. A listing that
        // stalls (entries removed before delivery) times out as unavailable.
        if watch.pending > 0 {
            loop {
                let Delivered { entry, pending } =
                    match rt::timeout_at(deadline, watch.entries.next()).await {
                        Err(e) => return Err(unavailable("watch listing", e)),
                        Ok(None) => return Err(unavailable("watch listing", "stream closed")),
                        Ok(Some(Err(e))) => return Err(unavailable("watch listing", e)),
                        Ok(Some(Ok(delivered))) => delivered,
                    };
                view.apply(entry.key.clone(), slot_of(&entry));
                if pending == 0 {
                    break;
                }
            }
        }
        Ok((view, watch))
    }

    /// The blocking query: returns at once if the service's latest revision
    /// is past `index` (or `wait` is zero); otherwise waits until the healthy
    /// set changes (a write other than a heartbeat of a passing instance, or
    /// an expiry) or `wait` passes.
    pub(super) async fn blocking_watch(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<WatchResult, RegistryError> {
        let deadline = rt::now() + wait;
        let listed = self.list_retrying(name).await?;
        let now_ms = rt::unix_ms();
        self.reap(&listed, now_ms).await;
        if listed.latest().max(1) > index || rt::now() >= deadline {
            return Ok(WatchResult {
                index: listed.latest().max(1),
                instances: listed.healthy(now_ms),
            });
        }
        let (view, watch) = match self.open(name).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(error = %e, "watch consumer failed; retrying once");
                self.ensure_bucket().await?;
                self.open(name).await?
            }
        };
        self.wait_for_change(view, watch, index, deadline).await
    }

    async fn wait_for_change(
        &self,
        mut view: View,
        mut watch: Watch,
        index: u64,
        deadline: rt::Instant,
    ) -> Result<WatchResult, RegistryError> {
        let baseline = view.healthy(rt::unix_ms());
        // Changed between the listing and the consumer's start.
        let mut changed = view.latest().max(1) > index;
        loop {
            let now_ms = rt::unix_ms();
            self.reap(&view, now_ms).await;
            let instances = view.healthy(now_ms);
            if changed || instances != baseline || rt::now() >= deadline {
                return Ok(WatchResult {
                    index: view.latest().max(1),
                    instances,
                });
            }
            let until = view.next_event(now_ms).map_or(deadline, |at| {
                (rt::now() + Duration::from_millis(at - now_ms)).min(deadline)
            });
            match rt::timeout_at(until, watch.entries.next()).await {
                Err(rt::Elapsed) => {}
                Ok(Some(Ok(Delivered { entry, .. }))) => {
                    view.apply(entry.key.clone(), slot_of(&entry));
                }
                Ok(Some(Err(e))) => {
                    rt::coverage::hit(WATCH_CUT);
                    return Err(unavailable("watch", e));
                }
                Ok(None) => {
                    rt::coverage::hit(WATCH_CUT);
                    return Err(unavailable("watch", "stream closed"));
                }
            }
            changed = false;
        }
    }
}
