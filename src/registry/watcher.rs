//! A long-running watch of one service's healthy set over blocking queries,
//! following Consul's rules: reset the index when it goes backwards, never
//! send 0 after the first answer, back off on errors, and rate-limit the
//! loop so that no answer pattern can make it spin.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::rt::watch;

use super::{Registry, ServiceInfo};
use crate::rt;

/// How a [`Watcher`] paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPolicy {
    /// The `wait` of each blocking query.
    pub wait: Duration,
    /// At least this long between two queries, whatever they answer.
    pub min_interval: Duration,
    /// First delay after an error; doubles per consecutive error.
    pub error_backoff: Duration,
    /// Largest delay after errors.
    pub max_backoff: Duration,
}

impl Default for WatchPolicy {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(30),
            min_interval: Duration::from_millis(100),
            error_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The index to send next, given the one sent and the one answered
/// (Consul's blocking-query rules).
#[must_use]
pub fn next_index(sent: u64, answered: u64) -> u64 {
    if answered == 0 {
        1
    } else if answered < sent {
        0
    } else {
        answered
    }
}

/// Delay after `errors` consecutive errors: exponential, capped, with
/// jitter in [0.5, 1.0] of the step.
#[must_use]
pub fn error_delay(policy: &WatchPolicy, errors: u32, rng: &mut impl rand::Rng) -> Duration {
    let step = policy
        .error_backoff
        .saturating_mul(1 << errors.saturating_sub(1).min(16))
        .min(policy.max_backoff);
    step.mul_f64(rng.gen_range(0.5..=1.0))
}

/// A running watch; the latest healthy set is in [`Watcher::instances`].
#[derive(Debug)]
pub struct Watcher {
    rx: watch::Receiver<Vec<ServiceInfo>>,
    task: rt::JoinHandle<()>,
    /// Queries failed in a row since the last answer; `u32::MAX` until the
    /// first answer.
    errors: Arc<AtomicU32>,
}

impl Watcher {
    /// Starts watching `name`.
    #[must_use]
    pub fn spawn(registry: Arc<dyn Registry>, name: &str, policy: WatchPolicy) -> Self {
        let (tx, rx) = watch::channel(Vec::new());
        let errors = Arc::new(AtomicU32::new(u32::MAX));
        let task = rt::spawn(run(registry, name.to_owned(), policy, tx, errors.clone()));
        Self { rx, task, errors }
    }

    /// A receiver of the healthy set (changes wake `changed()`).
    #[must_use]
    pub fn instances(&self) -> watch::Receiver<Vec<ServiceInfo>> {
        self.rx.clone()
    }

    /// The healthy set, if the watch is current: it has answered, and its
    /// last query did not fail (else the set may be stale).
    #[must_use]
    pub fn current(&self) -> Option<Vec<ServiceInfo>> {
        (self.errors.load(Ordering::Acquire) == 0).then(|| self.rx.borrow().clone())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    registry: Arc<dyn Registry>,
    name: String,
    policy: WatchPolicy,
    tx: watch::Sender<Vec<ServiceInfo>>,
    failing: Arc<AtomicU32>,
) {
    let mut index = 0;
    let mut errors = 0u32;
    let mut answered = false;
    loop {
        let started = rt::now();
        match registry.watch(&name, index, policy.wait).await {
            Ok(answer) => {
                errors = 0;
                index = next_index(index, answer.index);
                let mut set = answer.instances;
                set.sort_by(|a, b| a.id.cmp(&b.id));
                // The first answer always notifies, even an empty one: a
                // caller waiting for discovery learns "none" at once rather
                // than after its timeout.
                tx.send_if_modified(|current| {
                    let changed = !answered || *current != set;
                    if changed {
                        *current = set;
                    }
                    changed
                });
                answered = true;
                failing.store(0, Ordering::Release);
            }
            Err(e) => {
                errors = errors.saturating_add(1);
                if answered {
                    failing.store(errors, Ordering::Release);
                }
                let delay = error_delay(&policy, errors, &mut rt::rng());
                tracing::warn!(service = %name, error = %e, ?delay, "registry watch failed");
                rt::sleep(delay).await;
            }
        }
        rt::sleep_until(started + policy.min_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;
    use crate::registry::test_support::instance;
    use crate::registry::{RegistryError, WatchResult};
    use async_trait::async_trait;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicU64;

    proptest! {
        #[test]
        fn index_rules(sent in 0u64..1000, answered in 0u64..1000) {
            let next = next_index(sent, answered);
            if answered == 0 { prop_assert_eq!(next, 1); }
            else if answered < sent { prop_assert_eq!(next, 0, "went backwards: reset"); }
            else { prop_assert_eq!(next, answered); }
        }

        #[test]
        fn error_delay_within_bounds(errors in 1u32..100, seed in any::<u64>()) {
            let policy = WatchPolicy::default();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            let d = error_delay(&policy, errors, &mut rng);
            let step = policy.error_backoff.saturating_mul(1 << (errors - 1).min(16)).min(policy.max_backoff);
            prop_assert!(d >= step / 2 && d <= step);
        }
    }

    /// Answers at once, with an index that goes backwards every other call,
    /// or fails: the worst case for spinning.
    struct Hostile {
        calls: AtomicU64,
        fail: bool,
    }

    #[async_trait]
    impl Registry for Hostile {
        async fn register(&self, _: &ServiceInfo) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn deregister(&self, _: &str) -> Result<(), RegistryError> {
            Ok(())
        }
        async fn heartbeat(&self, id: &str) -> Result<(), RegistryError> {
            Err(RegistryError::NotFound(id.into()))
        }
        async fn confirm(&self, id: &str) -> Result<(), RegistryError> {
            Err(RegistryError::NotFound(id.into()))
        }
        async fn watch(&self, _: &str, _: u64, _: Duration) -> Result<WatchResult, RegistryError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(RegistryError::Unavailable("down".into()));
            }
            Ok(WatchResult {
                index: if n.is_multiple_of(2) { 100 } else { 5 },
                instances: Vec::new(),
            })
        }
        async fn health(&self) -> Result<(), RegistryError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_spins_whatever_the_registry_answers() {
        for fail in [false, true] {
            let registry = Arc::new(Hostile {
                calls: AtomicU64::new(0),
                fail,
            });
            let policy = WatchPolicy::default();
            let watcher = Watcher::spawn(registry.clone(), "svc", policy);
            rt::sleep(Duration::from_secs(10)).await;
            assert_eq!(
                watcher.current().is_some(),
                !fail,
                "fail={fail}: current only while queries succeed"
            );
            drop(watcher);
            let calls = registry.calls.load(Ordering::SeqCst);
            let most = 10_000 / policy.min_interval.as_millis() as u64 + 1;
            assert!(
                calls <= most,
                "fail={fail}: {calls} queries in 10 s (at most {most})"
            );
            assert!(calls >= 2, "fail={fail}: the loop keeps going ({calls})");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_changes() {
        let registry = Arc::new(MemoryRegistry::new());
        let watcher = Watcher::spawn(registry.clone(), "svc", WatchPolicy::default());
        let mut rx = watcher.instances();
        let a = instance("svc", 7001, Duration::from_secs(60));
        registry.register(&a).await.unwrap();
        rt::timeout(Duration::from_secs(5), rx.wait_for(|set| set.len() == 1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(watcher.current(), Some(vec![a.clone()]));
        registry.deregister(&a.id).await.unwrap();
        rt::timeout(Duration::from_secs(5), rx.wait_for(Vec::is_empty))
            .await
            .unwrap()
            .unwrap();
    }
}
