//! The count of open connections, in all and per client, with the caps the
//! accept loop checks before it serves a connection.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::HashMap;

/// Why a connection is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds as many connections as it takes (503).
    Full,
    /// This client holds its share (429).
    ClientFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Open connections, at most `max` in all and `max_per_client` per client.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
    closed: Notify,
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
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a connection from `client`, or says which cap it would pass.
    ///
    /// # Errors
    /// The [`Refusal`] when a cap is reached.
    pub fn open(self: &Arc<Self>, client: IpAddr) -> Result<Open, Refusal> {
        let mut counts = self.lock();
        if counts.total >= self.max {
            return Err(Refusal::Full);
        }
        let held = counts.per_client.entry(client).or_insert(0);
        if *held >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        *held += 1;
        counts.total += 1;
        Ok(Open {
            connections: self.clone(),
            client,
        })
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
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut counts = self.connections.lock();
        counts.total -= 1;
        if let Some(held) = counts.per_client.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                // Only clients with connections open take memory.
                counts.per_client.remove(&self.client);
            }
        }
        let empty = counts.total == 0;
        drop(counts);
        if empty {
            self.connections.closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_client() {
        let conns = Arc::new(Connections::new(3, 2));
        let (a, b, c) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        let a1 = conns.open(a).expect("first of a");
        let a2 = conns.open(a).expect("second of a");
        assert_eq!(conns.open(a).unwrap_err(), Refusal::ClientFull);
        let b1 = conns.open(b).expect("b has its own share");
        assert_eq!(conns.open(c).unwrap_err(), Refusal::Full);
        assert_eq!((conns.total(), conns.of(a), conns.of(b)), (3, 2, 1));
        drop(a1);
        assert_eq!(conns.of(a), 1);
        let c1 = conns.open(c).expect("room again");
        drop((a2, b1, c1));
        assert_eq!(conns.total(), 0);
        assert!(conns.lock().per_client.is_empty(), "no memory kept");
    }

    #[tokio::test]
    async fn all_closed_waits_for_the_last_connection() {
        let conns = Arc::new(Connections::new(8, 8));
        let open = conns.open(IpAddr::from([127, 0, 0, 1])).expect("open");
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
