//! Reading one service's entries: a stateless listing (stream subjects, then
//! a direct get per key) for discovery, and an ordered consumer for blocking watches.

use std::time::Duration;

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::{self, kv::Operation};
use futures::{StreamExt as _, TryStreamExt as _};

use super::view::{Record, Slot, View, token};
use super::{NatsKvRegistry, unavailable, unix_ms_of};
use crate::registry::{RegistryError, WatchResult};
use crate::rt;

/// Direct gets of one listing in flight at once.
const LISTING_CONCURRENCY: usize = 16;

impl NatsKvRegistry {
    /// The subject filter of every key of service `name`.
    fn filter(&self, name: &str) -> String {
        format!("{}{}.*", self.store.prefix, token(name))
    }

    /// The latest entry of every key of `name`, read without server-side
    /// state: the stream's subjects under the filter, then a direct get each.
    async fn list(&self, name: &str) -> Result<View, RegistryError> {
        let listing = async {
            let subjects = self
                .store
                .stream
                .info_with_subjects(self.filter(name))
                .await;
            let subjects: Vec<String> = subjects
                .map_err(|e| unavailable("listing", e))?
                .map_ok(|(subject, _)| subject)
                .try_collect()
                .await
                .map_err(|e| unavailable("listing", e))?;
            let keys: Vec<String> = subjects
                .iter()
                .filter_map(|s| s.strip_prefix(self.store.prefix.as_str()))
                .map(str::to_owned)
                .collect();
            // Owned keys and store: the futures must not borrow (Send bounds).
            let mut gets = futures::stream::iter(keys)
                .map(|key: String| {
                    let store = self.store.clone();
                    async move {
                        let entry = store.entry(key.as_str()).await;
                        (key, entry)
                    }
                })
                .buffer_unordered(LISTING_CONCURRENCY);
            let mut view = View::default();
            while let Some((key, entry)) = gets.next().await {
                // `None`: removed since it was listed.
                if let Some(entry) = entry.map_err(|e| unavailable("listing", e))? {
                    let record = match entry.operation {
                        Operation::Put => Record::parse(&key, &entry.value),
                        Operation::Delete | Operation::Purge => None,
                    };
                    let slot = Slot {
                        revision: entry.revision,
                        written_unix_ms: unix_ms_of(entry.created),
                        record,
                    };
                    view.apply(key, slot);
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

    /// Turns a delivered message into its key, slot and the count of
    /// messages still pending behind it.
    fn slot_of(&self, msg: &jetstream::Message) -> Option<(String, Slot, u64)> {
        let info = match msg.info() {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "registry message without metadata skipped");
                return None;
            }
        };
        let key = msg
            .subject
            .strip_prefix(self.store.prefix.as_str())?
            .to_owned();
        let removed = msg.headers.as_ref().is_some_and(|h| {
            h.get("Nats-Marker-Reason").is_some()
                || h.get("KV-Operation").is_some_and(|op| {
                    op.as_str()
                        .parse::<Operation>()
                        .is_ok_and(|op| op != Operation::Put)
                })
        });
        let record = if removed {
            None
        } else {
            Record::parse(&key, &msg.payload)
        };
        let slot = Slot {
            revision: info.stream_sequence,
            written_unix_ms: unix_ms_of(info.published),
            record,
        };
        Some((key, slot, info.pending))
    }

    /// Opens an ordered consumer on the latest entry of every key of `name`
    /// and reads them; the consumer then delivers later changes. Also
    /// returns the consumer's name, to delete it when done.
    async fn open(&self, name: &str) -> Result<(View, Ordered, String), RegistryError> {
        let config = OrderedConfig {
            deliver_subject: self.client.new_inbox(),
            description: Some("streamgate registry watch".to_owned()),
            filter_subject: self.filter(name),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            ..Default::default()
        };
        let deadline = rt::now() + self.opts.request_timeout;
        let consumer = rt::timeout_at(deadline, self.store.stream.create_consumer(config))
            .await
            .map_err(|e| unavailable("watch", e))?
            .map_err(|e| unavailable("watch", e))?;
        let pending = consumer.cached_info().num_pending;
        let consumer_name = consumer.cached_info().name.clone();
        let mut messages = rt::timeout_at(deadline, consumer.messages())
            .await
            .map_err(|e| unavailable("watch", e))?
            .map_err(|e| unavailable("watch", e))?;
        let mut view = View::default();
        // Until the message with nothing pending behind it. A listing that
        // stalls (entries removed before delivery) times out as unavailable.
        if pending > 0 {
            loop {
                let msg = match rt::timeout_at(deadline, messages.next()).await {
                    Err(e) => return Err(unavailable("watch listing", e)),
                    Ok(None) => return Err(unavailable("watch listing", "stream closed")),
                    Ok(Some(Err(e))) => return Err(unavailable("watch listing", e)),
                    Ok(Some(Ok(msg))) => msg,
                };
                let Some((key, slot, left)) = self.slot_of(&msg) else {
                    continue;
                };
                view.apply(key, slot);
                if left == 0 {
                    break;
                }
            }
        }
        Ok((view, messages, consumer_name))
    }

    /// Deletes an ephemeral consumer in the background (the server would
    /// otherwise keep it for its 30 s inactivity threshold).
    fn drop_consumer(&self, name: String) {
        let (stream, timeout) = (self.store.stream.clone(), self.opts.request_timeout);
        drop(rt::spawn(async move {
            if let Ok(Err(e)) = rt::timeout(timeout, stream.delete_consumer(&name)).await {
                tracing::debug!(consumer = %name, error = %e, "watch consumer not deleted");
            }
        }));
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
        let (view, messages, consumer) = match self.open(name).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(error = %e, "watch consumer failed; retrying once");
                self.ensure_bucket().await?;
                self.open(name).await?
            }
        };
        let result = self.wait_for_change(view, messages, index, deadline).await;
        self.drop_consumer(consumer);
        result
    }

    async fn wait_for_change(
        &self,
        mut view: View,
        mut messages: Ordered,
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
            match rt::timeout_at(until, messages.next()).await {
                Err(rt::Elapsed) => {}
                Ok(Some(Ok(msg))) => {
                    if let Some((key, slot, _)) = self.slot_of(&msg) {
                        view.apply(key, slot);
                    }
                }
                Ok(Some(Err(e))) => return Err(unavailable("watch", e)),
                Ok(None) => return Err(unavailable("watch", "stream closed")),
            }
            changed = false;
        }
    }
}
