//! In-process registry (the monolith's, and the reference for the contract).
//! TTL checks, critical state and deregister-critical-after follow Consul.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::rt::watch;
use async_trait::async_trait;

use super::{CheckKind, HealthStatus, Registry, RegistryError, ServiceInfo, WatchResult, validate};
use crate::rt::{self, Instant};

/// Most instances held at once; registering more is refused.
pub const MAX_INSTANCES: usize = 10_000;

#[derive(Debug)]
struct Entry {
    info: ServiceInfo,
    last_pass: Instant,
    status: HealthStatus,
    critical_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    entries: BTreeMap<String, Entry>,
}

impl State {
    fn bump(&mut self) {
        self.index += 1;
    }

    /// Applies TTL expiry and deregister-critical-after as of `now`.
    fn reap(&mut self, now: Instant) {
        let mut changed = false;
        self.entries.retain(|_, e| {
            if e.info.check.kind == CheckKind::Ttl
                && e.status != HealthStatus::Critical
                && now >= e.last_pass + e.info.check.ttl_expiry()
            {
                e.status = HealthStatus::Critical;
                e.critical_since = Some(e.last_pass + e.info.check.ttl_expiry());
                changed = true;
            }
            let expired = e
                .critical_since
                .is_some_and(|since| now >= since + e.info.check.deregister_critical_after);
            changed |= expired;
            !expired
        });
        if changed {
            self.bump();
        }
    }

    /// The next instant at which [`State::reap`] would change something.
    fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.critical_since {
                Some(since) => Some(since + e.info.check.deregister_critical_after),
                None if e.info.check.kind == CheckKind::Ttl => {
                    Some(e.last_pass + e.info.check.ttl_expiry())
                }
                None => None,
            })
            .min()
    }

    fn healthy(&self, name: &str) -> Vec<ServiceInfo> {
        self.entries
            .values()
            .filter(|e| e.info.name == name && e.status != HealthStatus::Critical)
            .map(|e| e.info.clone())
            .collect()
    }
}

/// A registry held in memory, shared by every service of one process.
#[derive(Debug)]
pub struct MemoryRegistry {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::default()),
            changes: watch::Sender::new(0),
        }
    }
}

impl MemoryRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every registration, as a Consul agent that lost its data does.
    pub fn wipe(&self) {
        self.mutate(|s| {
            s.entries.clear();
            Ok(())
        })
        .expect("wipe cannot fail");
    }

    /// Sets the health of instance `id`, as a check the registry ran would
    /// (an HTTP check answering 429 is a warning); a heartbeat makes a TTL
    /// instance passing again. False if `id` is not registered.
    pub fn set_status(&self, id: &str, status: HealthStatus) -> bool {
        let now = rt::now();
        self.mutate(|s| {
            let Some(e) = s.entries.get_mut(id) else {
                return Ok(false);
            };
            if e.status != status {
                e.status = status;
                e.critical_since = (status == HealthStatus::Critical).then_some(now);
            }
            Ok(true)
        })
        .unwrap_or(false)
    }

    /// The health of instance `id`, if registered.
    #[must_use]
    pub fn status(&self, id: &str) -> Option<HealthStatus> {
        let mut s = self.lock();
        s.reap(rt::now());
        s.entries.get(id).map(|e| e.status)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mutate<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let (out, index) = {
            let mut s = self.lock();
            s.reap(rt::now());
            let out = f(&mut s)?;
            s.bump();
            (out, s.index)
        };
        self.changes.send_replace(index);
        Ok(out)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, info: &ServiceInfo) -> Result<(), RegistryError> {
        validate(info)?;
        self.mutate(|s| {
            if s.entries.len() >= MAX_INSTANCES && !s.entries.contains_key(&info.id) {
                return Err(RegistryError::Invalid(format!(
                    "more than {MAX_INSTANCES} instances"
                )));
            }
            let entry = Entry {
                info: info.clone(),
                last_pass: rt::now(),
                status: HealthStatus::Passing,
                critical_since: None,
            };
            s.entries.insert(info.id.clone(), entry);
            Ok(())
        })
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        self.mutate(|s| {
            s.entries.remove(id);
            Ok(())
        })
    }

    async fn heartbeat(&self, id: &str) -> Result<(), RegistryError> {
        let now = rt::now();
        let mut s = self.lock();
        s.reap(now);
        let entry = s
            .entries
            .get_mut(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        entry.last_pass = now;
        if entry.status != HealthStatus::Passing {
            entry.status = HealthStatus::Passing;
            entry.critical_since = None;
            s.bump();
            let index = s.index;
            drop(s);
            self.changes.send_replace(index);
        }
        Ok(())
    }

    async fn confirm(&self, id: &str) -> Result<(), RegistryError> {
        let mut s = self.lock();
        s.reap(rt::now());
        if s.entries.contains_key(id) {
            Ok(())
        } else {
            Err(RegistryError::NotFound(id.to_owned()))
        }
    }

    async fn watch(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<WatchResult, RegistryError> {
        let deadline = rt::now() + wait;
        loop {
            let mut changes = self.changes.subscribe();
            let now = rt::now();
            let (current, instances, next) = {
                let mut s = self.lock();
                s.reap(now);
                (s.index.max(1), s.healthy(name), s.next_deadline())
            };
            if current > index || now >= deadline {
                return Ok(WatchResult {
                    index: current,
                    instances,
                });
            }
            let until = next.map_or(deadline, |n| n.min(deadline));
            let _ = rt::timeout_at(until, changes.changed()).await;
        }
    }

    async fn health(&self) -> Result<(), RegistryError> {
        Ok(())
    }
}
