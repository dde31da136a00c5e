//! The count of open connections, in all and per client, with the caps the
//! accept loop checks before it serves a connection.
//!
//! At the cap in all, a new connection is not refused while an open one is
//! idle: an idle connection (of the oldest idle ones, the one idle the
//! longest) is told to close and the new one takes its place (nginx does the same with its kept-alive connections
//! when it runs out). Idle connections cost only memory, so thousands of
//! clients that connect and send nothing cannot keep the others out; a new
//! connection is refused (503) only when every open one has a request in
//! flight or a request head on its way.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::io::Activity;
use crate::HashMap;

/// Why a connection is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds as many connections as it takes (503).
    Full,
    /// This client holds its share (429).
    ClientFull,
}

/// Connections told to close to make room and not closed yet, at most
/// (each closes within a turn of its task): this bounds how far `total` may
/// pass the cap. The accept loop waits for [`Connections::room`] before it
/// accepts, so a burst of new connections waits in the listen backlog
/// rather than being refused.
const MAX_EVICTING: usize = 64;

/// Idle connections looked at to choose which closes to make room: the
/// oldest ones (a connection open long and idle now is most often one that
/// has been idle long).
const EVICTION_SAMPLE: usize = 16;

/// An open connection that may be told to close to make room.
#[derive(Debug)]
struct Evictable {
    activity: Arc<Activity>,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Connections counted and not yet dropped, evicted ones included.
    total: usize,
    /// Of `total`, those told to close that have not closed yet.
    evicting: usize,
    per_client: HashMap<IpAddr, usize>,
    /// The connections not told to close yet, by id: oldest first.
    open: BTreeMap<u64, Evictable>,
    next_id: u64,
}

impl Counts {
    /// Tells the connection idle the longest among the [`EVICTION_SAMPLE`]
    /// oldest idle ones to close; whether there was one. (Looking at every
    /// connection would cost the accept loop time in proportion to the cap
    /// on each accept at the cap, the moment it must be quickest.)
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .open
            .iter()
            .filter_map(|(id, c)| c.activity.idle_since().map(|since| (since, *id)))
            .take(EVICTION_SAMPLE)
            .min();
        let Some((_, id)) = idlest else {
            return false;
        };
        if let Some(victim) = self.open.remove(&id) {
            victim.evict.notify_one();
            self.evicting += 1;
        }
        true
    }
}

/// Open connections, at most `max` in all and `max_per_client` per client.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
    closed: Notify,
    /// Told when a connection told to close has closed.
    evicted_closed: Notify,
}

impl Connections {
    /// No connection yet.
    #[must_use]
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            max,
            max_per_client,
            counts: Mutex::default(),
            closed: Notify::new(),
            evicted_closed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a connection from `client` whose doings `activity` follows,
    /// or says which cap it would pass. At the cap in all, the connection
    /// idle the longest (of the oldest idle ones) is told to close
    /// ([`Open::evicted`]) to make room.
    ///
    /// # Errors
    /// The [`Refusal`] when a cap is reached (and, in all, no open
    /// connection is idle).
    pub fn open(
        self: &Arc<Self>,
        client: IpAddr,
        activity: Arc<Activity>,
    ) -> Result<Open, Refusal> {
        let mut counts = self.lock();
        if counts.per_client.get(&client).copied().unwrap_or(0) >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        if counts.total - counts.evicting >= self.max
            && (counts.evicting >= MAX_EVICTING || !counts.evict_idlest())
        {
            return Err(Refusal::Full);
        }
        *counts.per_client.entry(client).or_insert(0) += 1;
        counts.total += 1;
        let id = counts.next_id;
        counts.next_id += 1;
        let evict = Arc::new(Notify::new());
        counts.open.insert(
            id,
            Evictable {
                activity,
                evict: evict.clone(),
            },
        );
        Ok(Open {
            connections: self.clone(),
            client,
            id,
            evict,
        })
    }

    /// Waits while as many connections as may be are told to close and
    /// still open, so that the next [`Connections::open`] can make room.
    pub async fn room(&self) {
        loop {
            let closed = self.evicted_closed.notified();
            if self.lock().evicting < MAX_EVICTING {
                return;
            }
            closed.await;
        }
    }

    /// Connections open now.
    #[must_use]
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Connections `client` holds now.
    #[cfg(test)]
    fn of(&self, client: IpAddr) -> usize {
        self.lock().per_client.get(&client).copied().unwrap_or(0)
    }

    /// Waits until no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.total() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// One counted connection; dropping it closes the count.
#[derive(Debug)]
pub struct Open {
    connections: Arc<Connections>,
    client: IpAddr,
    id: u64,
    evict: Arc<Notify>,
}

impl Open {
    /// Resolves once the connection is told to close to make room for a
    /// new one (it was idle when the server was full).
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut counts = self.connections.lock();
        counts.total -= 1;
        let was_evicted = counts.open.remove(&self.id).is_none();
        if was_evicted {
            counts.evicting -= 1;
        }
        if let Some(held) = counts.per_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                // Only clients with connections open take memory.
                counts.per_client.remove(&self.client);
            }
        }
        let empty = counts.total == 0;
        drop(counts);
        if was_evicted {
            self.connections.evicted_closed.notify_waiters();
        }
        if empty {
            self.connections.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rt;

    fn idle() -> Arc<Activity> {
        Arc::new(Activity::new(rt::now()))
    }

    #[test]
    fn caps_hold_in_all_and_per_client() {
        let conns = Arc::new(Connections::new(3, 2));
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        // Busy connections: none can be told to close.
        let busy: Vec<_> = (0..3).map(|_| idle()).collect();
        let _requests: Vec<_> = busy.iter().map(Activity::begin).collect();
        let a1 = conns.open(a, busy[0].clone()).expect("first of a");
        let a2 = conns.open(a, busy[1].clone()).expect("second of a");
        assert_eq!(conns.open(a, idle()).unwrap_err(), Refusal::ClientFull);
        let b1 = conns.open(b, busy[2].clone()).expect("b has its own share");
        assert_eq!(conns.open(c, idle()).unwrap_err(), Refusal::Full);
        assert_eq!((conns.total(), conns.of(a), conns.of(b)), (3, 2, 1));
        drop(a1);
        assert_eq!(conns.of(a), 1);
        let c1 = conns.open(c, idle()).expect("room again");
        drop((a2, b1, c1));
        assert_eq!(conns.total(), 0);
        let counts = conns.lock();
        assert!(
            counts.per_client.is_empty() && counts.open.is_empty(),
            "no memory kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_connection_idle_longest_makes_room() {
        let conns = Arc::new(Connections::new(3, 8));
        let client = IpAddr::from([10, 0, 0, 1]);
        let oldest = conns.open(client, idle()).expect("1");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = idle();
        let request = busy.begin();
        let serving = conns.open(client, busy).expect("2");
        let newer = conns.open(client, idle()).expect("3");
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Full: the oldest idle one is told to close, the busy one is not.
        let fourth = conns.open(client, idle()).expect("room made");
        tokio::time::timeout(Duration::from_millis(1), oldest.evicted())
            .await
            .expect("the oldest idle connection is told to close");
        assert_eq!(conns.total(), 4, "counted until it closes");
        drop(oldest);
        assert_eq!(conns.total(), 3);

        // Again: now `newer` is the one idle longest.
        let fifth = conns.open(client, idle()).expect("room made again");
        tokio::time::timeout(Duration::from_millis(1), newer.evicted())
            .await
            .expect("told to close");
        assert!(
            tokio::time::timeout(Duration::from_secs(5), serving.evicted())
                .await
                .is_err(),
            "a connection serving a request is never told to close"
        );
        drop((newer, request, serving, fourth, fifth));
        assert_eq!(conns.total(), 0);
        assert_eq!(conns.lock().evicting, 0);
    }

    #[tokio::test]
    async fn connections_told_to_close_and_still_open_are_bounded() {
        let conns = Arc::new(Connections::new(1, usize::MAX));
        let client = IpAddr::from([10, 0, 0, 1]);
        // Each new one evicts the last; none of them closes.
        let held: Vec<_> = (0..=MAX_EVICTING)
            .map(|_| conns.open(client, idle()).expect("room made"))
            .collect();
        assert_eq!(conns.lock().evicting, MAX_EVICTING);
        assert_eq!(conns.open(client, idle()).unwrap_err(), Refusal::Full);
        // The accept loop waits for room: one closing is enough.
        let room = tokio::spawn({
            let conns = conns.clone();
            async move { conns.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!room.is_finished());
        let mut held = held.into_iter();
        drop(held.next());
        room.await.expect("room");
        let again = conns.open(client, idle()).expect("room made again");
        drop((held, again));
        assert_eq!(conns.total(), 0);
        assert_eq!(conns.lock().evicting, 0);
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_connection() {
        let conns = Arc::new(Connections::new(8, 8));
        let open = conns
            .open(IpAddr::from([127, 0, 0, 1]), idle())
            .expect("open");
        let waiter = tokio::spawn({
            let conns = conns.clone();
            async move { conns.all_closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(open);
        waiter.await.expect("the wait ends");
    }
}
