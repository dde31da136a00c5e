//! In-process event bus (the monolith's): subjects, queue groups, bounded
//! per-subscriber queues with back-pressure (a full queue makes the publisher
//! wait; nothing is dropped).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{BusError, Event, EventBus, Handler, Subscription, check_subscription, dispatch};
use crate::rt;

/// Events buffered per subscriber before publishers wait.
pub const QUEUE_CAPACITY: usize = 1024;
/// Most subscriptions at once.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// The subscribers of one subject: every plain one gets each event, each
/// queue group one member (round robin).
#[derive(Debug, Default)]
struct Topic {
    plain: Vec<mpsc::Sender<Event>>,
    groups: Vec<(String, Vec<mpsc::Sender<Event>>)>,
}

impl Topic {
    fn len(&self) -> usize {
        self.plain.len() + self.groups.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    /// Drops the subscribers that went away (and groups left empty).
    fn prune(&mut self) {
        self.plain.retain(|tx| !tx.is_closed());
        for (_, members) in &mut self.groups {
            members.retain(|tx| !tx.is_closed());
        }
        self.groups.retain(|(_, members)| !members.is_empty());
    }
}

#[derive(Debug, Default)]
struct Inner {
    closed: bool,
    topics: HashMap<String, Topic>,
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

    /// Hands `event` to every queue it goes to that has room, under the lock
    /// (no allocation but the copies of the event); returns the queues that
    /// were full, with their copy, for the caller to wait on outside the lock.
    fn offer(&self, event: &Event) -> Result<Vec<(mpsc::Sender<Event>, Event)>, BusError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(BusError::Closed);
        }
        inner.round_robin = inner.round_robin.wrapping_add(1);
        let turn = inner.round_robin;
        let Some(topic) = inner.topics.get_mut(event.kind.subject()) else {
            return Ok(Vec::new());
        };
        let (mut full, mut gone) = (Vec::new(), false);
        for tx in &topic.plain {
            gone |= !hand_over(tx, event, &mut full);
        }
        for (_, members) in &mut topic.groups {
            // A group must not lose an event to a member that left.
            members.retain(|tx| !tx.is_closed());
            if members.is_empty() {
                continue;
            }
            let pick = usize::try_from(turn % members.len() as u64).unwrap_or(0);
            gone |= !hand_over(&members[pick], event, &mut full);
        }
        if gone {
            topic.prune();
        }
        Ok(full)
    }
}

/// Queues a copy of `event` on `tx` if it has room, else keeps the copy in
/// `full` for a waiting send; false if the subscriber went away (it just
/// misses the event).
fn hand_over(
    tx: &mpsc::Sender<Event>,
    event: &Event,
    full: &mut Vec<(mpsc::Sender<Event>, Event)>,
) -> bool {
    match tx.try_send(event.clone()) {
        Ok(()) => true,
        Err(TrySendError::Full(copy)) => {
            full.push((tx.clone(), copy));
            true
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        for (tx, copy) in self.offer(event)? {
            // A subscriber that went away in between just misses the event.
            let _ = tx.send(copy).await;
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
            for topic in inner.topics.values_mut() {
                topic.prune();
            }
            inner.topics.retain(|_, topic| topic.len() > 0);
            let total: usize = inner.topics.values().map(Topic::len).sum();
            if total >= MAX_SUBSCRIPTIONS {
                return Err(BusError::Unavailable(format!(
                    "more than {MAX_SUBSCRIPTIONS} subscriptions"
                )));
            }
            let topic = inner.topics.entry(subject.to_owned()).or_default();
            match queue_group {
                None => topic.plain.push(tx),
                Some(group) => match topic.groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, members)) => members.push(tx),
                    None => topic.groups.push((group.to_owned(), vec![tx])),
                },
            }
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
        inner.topics.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::bus::{EventType, handler};

    fn numbered(i: usize) -> Event {
        Event::new(
            EventType::JobSubmitted,
            "test",
            serde_json::json!({ "n": i }),
        )
    }

    /// Publishing far past a slow subscriber's queue waits instead of
    /// dropping: every event arrives, in order.
    #[tokio::test]
    async fn a_full_queue_makes_the_publisher_wait_and_loses_nothing() {
        let bus = MemoryBus::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let _sub = bus
            .subscribe(
                EventType::JobSubmitted.subject(),
                None,
                handler(move |event| {
                    let s = s.clone();
                    async move {
                        rt::sleep(Duration::from_micros(1)).await;
                        s.lock().expect("seen").push(event.data["n"].as_u64());
                        Ok(())
                    }
                }),
            )
            .await
            .expect("subscribe");
        let n = QUEUE_CAPACITY * 3;
        for i in 0..n {
            bus.publish(&numbered(i)).await.expect("publish");
        }
        crate::rt::timeout(Duration::from_secs(30), async {
            while seen.lock().expect("seen").len() < n {
                rt::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("all delivered");
        let seen = seen.lock().expect("seen").clone();
        let want: Vec<_> = (0..n as u64).map(Some).collect();
        assert_eq!(seen, want);
    }

    /// Subscribers that went away are pruned and don't count toward the
    /// subscription limit; a live one on the same subject keeps receiving.
    #[tokio::test]
    async fn gone_subscribers_are_pruned() {
        let bus = MemoryBus::new();
        let subject = EventType::JobSubmitted.subject();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        let _live = bus
            .subscribe(
                subject,
                Some("workers"),
                handler(move |_| {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async { Ok(()) }
                }),
            )
            .await
            .expect("subscribe");
        for _ in 0..5 {
            let sub = bus
                .subscribe(subject, Some("workers"), handler(|_| async { Ok(()) }))
                .await
                .expect("subscribe");
            sub.unsubscribe();
        }
        // Let the aborted tasks drop their receivers.
        rt::sleep(Duration::from_millis(10)).await;
        for i in 0..10 {
            bus.publish(&numbered(i)).await.expect("publish");
        }
        rt::sleep(Duration::from_millis(10)).await;
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 10);
        let inner = bus.lock();
        assert_eq!(inner.topics.get(subject).map(Topic::len), Some(1));
    }
}
