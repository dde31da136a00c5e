//! In-process event bus (the monolith's): subjects, queue groups, bounded
//! per-subscriber queues with back-pressure (a full queue makes the publisher
//! wait; nothing is dropped).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{BusError, Event, EventBus, Handler, Subscription, check_subscription, dispatch};
use crate::rt;

/// Events buffered per subscriber before publishers wait.
pub const QUEUE_CAPACITY: usize = 1024;
/// Most subscriptions at once.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

#[derive(Debug)]
struct Subscriber {
    group: Option<String>,
    tx: mpsc::Sender<Event>,
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    subjects: HashMap<String, Vec<Subscriber>>,
    round_robin: u64,
}

/// An event bus held in memory.
#[derive(Debug, Default)]
pub struct MemoryBus {
    inner: Mutex<Inner>,
}

impl MemoryBus {
    /// An empty, open bus.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The queues `event` goes to: every plain subscriber, one per group.
    fn targets(&self, subject: &str) -> Result<Vec<mpsc::Sender<Event>>, BusError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(BusError::Closed);
        }
        inner.round_robin = inner.round_robin.wrapping_add(1);
        let turn = inner.round_robin;
        let Some(subs) = inner.subjects.get_mut(subject) else {
            return Ok(Vec::new());
        };
        subs.retain(|s| !s.tx.is_closed());
        let mut targets: Vec<_> = subs
            .iter()
            .filter(|s| s.group.is_none())
            .map(|s| s.tx.clone())
            .collect();
        let mut groups: Vec<&str> = subs.iter().filter_map(|s| s.group.as_deref()).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            let members: Vec<_> = subs
                .iter()
                .filter(|s| s.group.as_deref() == Some(group))
                .collect();
            let pick = usize::try_from(turn % members.len() as u64).unwrap_or(0);
            targets.push(members[pick].tx.clone());
        }
        Ok(targets)
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        for tx in self.targets(event.kind.subject())? {
            // A subscriber that went away in between just misses the event.
            let _ = tx.send(event.clone()).await;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: Handler,
    ) -> Result<Subscription, BusError> {
        check_subscription(subject, queue_group)?;
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        {
            let mut inner = self.lock();
            if inner.closed {
                return Err(BusError::Closed);
            }
            let total: usize = inner.subjects.values().map(Vec::len).sum();
            if total >= MAX_SUBSCRIPTIONS {
                return Err(BusError::Unavailable(format!(
                    "more than {MAX_SUBSCRIPTIONS} subscriptions"
                )));
            }
            let subscriber = Subscriber {
                group: queue_group.map(str::to_owned),
                tx,
            };
            inner
                .subjects
                .entry(subject.to_owned())
                .or_default()
                .push(subscriber);
        }
        let task = rt::spawn(async move {
            while let Some(event) = rx.recv().await {
                dispatch(&handler, event).await;
            }
        });
        Ok(Subscription::new(task))
    }

    async fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        // Dropping the senders lets each subscriber drain its queue and stop.
        inner.subjects.clear();
    }
}
