//! A single-value watch channel, like `tokio::sync::watch` but
//! deterministic: tokio's picks one of eight wait slots at random from a
//! thread-local generator seeded from a process-wide counter, so the order
//! in which it wakes waiters differed between two runs of one seed in one
//! process (madsim's determinism check) and between a seed run alone and
//! the same seed run after others. This one wakes waiters in the order they
//! started waiting (tokio's `Notify`, which draws no randomness).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Shared<T> {
    /// The value and its version (bumped on every change).
    value: Mutex<(T, u64)>,
    changed: Notify,
    closed: AtomicBool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, (T, u64)> {
        self.value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The sending half; dropping it closes the channel.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A receiving half: sees the latest value, and waits for changes it has
/// not seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// The sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the watch channel is closed")]
pub struct Closed;

/// A borrowed value (holds the channel's lock: keep it short).
pub struct Ref<'a, T>(MutexGuard<'a, (T, u64)>);

impl<T> std::ops::Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0.0
    }
}

/// A channel holding `init`; receivers have seen it.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    let sender = Sender::new(init);
    let receiver = sender.subscribe();
    (sender, receiver)
}

impl<T> Sender<T> {
    /// A channel holding `init`, with no receiver yet.
    pub fn new(init: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                value: Mutex::new((init, 0)),
                changed: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// A new receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        let seen = self.shared.lock().1;
        Receiver {
            shared: self.shared.clone(),
            seen,
        }
    }

    /// Replaces the value (a change, even if equal); returns the old one.
    pub fn send_replace(&self, value: T) -> T {
        let old = {
            let mut v = self.shared.lock();
            v.1 += 1;
            std::mem::replace(&mut v.0, value)
        };
        self.shared.changed.notify_waiters();
        old
    }

    /// Lets `modify` change the value in place; receivers are told only if
    /// it returns true. Returns what it returned.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut v = self.shared.lock();
            let modified = modify(&mut v.0);
            if modified {
                v.1 += 1;
            }
            modified
        };
        if modified {
            self.shared.changed.notify_waiters();
        }
        modified
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Receiver<T> {
    /// The latest value.
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(self.shared.lock())
    }

    /// The latest value, marked seen.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let guard = self.shared.lock();
        self.seen = guard.1;
        Ref(guard)
    }

    /// Waits for a value this receiver has not seen.
    ///
    /// # Errors
    /// [`Closed`] once the sender is gone (and every value was seen).
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a change in between wakes us.
            notified.as_mut().enable();
            if self.shared.lock().1 != self.seen {
                return Ok(());
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            notified.await;
        }
    }

    /// Waits until the value satisfies `ready` (checking the current one
    /// first), marking it seen.
    ///
    /// # Errors
    /// [`Closed`] if the sender goes away first.
    pub async fn wait_for(&mut self, mut ready: impl FnMut(&T) -> bool) -> Result<(), Closed> {
        loop {
            let done = {
                let guard = self.shared.lock();
                self.seen = guard.1;
                ready(&guard.0)
            };
            if done {
                return Ok(());
            }
            self.changed().await?;
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn receivers_see_changes_in_order_and_closing() {
        let (tx, mut rx) = channel(0u32);
        let mut other = rx.clone();
        assert_eq!(*rx.borrow(), 0);
        let waiter =
            crate::rt::spawn(
                async move { other.wait_for(|v| *v >= 2).await.map(|()| *other.borrow()) },
            );
        tx.send_replace(1);
        rx.changed().await.expect("a change");
        assert_eq!(*rx.borrow_and_update(), 1);
        assert!(!tx.send_if_modified(|_| false));
        assert!(
            crate::rt::timeout(Duration::from_millis(10), rx.changed())
                .await
                .is_err(),
            "no change, no wake"
        );
        assert!(tx.send_if_modified(|v| {
            *v = 2;
            true
        }));
        assert_eq!(waiter.await.expect("task"), Ok(2));
        drop(tx);
        rx.borrow_and_update();
        assert_eq!(rx.changed().await, Err(Closed));
    }
}
