//! Readiness of one process: each service's own check (draining, the
//! gateway's budget of requests in flight) and the dependencies every
//! service of the process needs (the registry, the bus, the blob store, a
//! service's database), probed in the background.
//!
//! A dependency is not ready until its probe has answered once, and again
//! not ready once [`FAILURES_BEFORE_NOT_READY`] probes in a row failed (one
//! lost probe is no reason to take a process out of rotation). Probes run
//! every [`PROBE_INTERVAL`], each bounded by [`PROBE_TIMEOUT`], all at once,
//! so a hung database never holds up the answer of `/ready`: `/ready` reads
//! the last results, it never waits on a dependency.
//!
//! A trade-off an operator should know: the registry and the bus are shared
//! by every instance, so when one of them is down every instance reports
//! not ready together. That is the intended signal (nothing new gets
//! through the pipeline), and a load balancer that drops every backend at
//! once usually keeps sending to all of them (Kubernetes and Envoy do);
//! `/health` stays liveness and never fails on a dependency.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::rt;

/// How often the dependencies are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Longest one probe may take; a probe that takes longer failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes failed in a row after which a dependency that had answered makes
/// the process not ready.
pub const FAILURES_BEFORE_NOT_READY: u32 = 2;

/// Says why a service is not ready (`Some(reason)`), or `None`.
pub type ReadyCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Asks a dependency whether it answers: `Err` says what failed.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What the probes of one dependency found so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// It answered at least once.
    answered: bool,
    /// Probes failed in a row.
    failures: u32,
    /// What the last failed probe said.
    error: Option<String>,
}

impl Seen {
    fn not_ready(&self, name: &str) -> Option<String> {
        let why = || self.error.clone().unwrap_or_else(|| "no answer".to_owned());
        if !self.answered {
            return Some(format!("{name} has not answered yet: {}", why()));
        }
        (self.failures >= FAILURES_BEFORE_NOT_READY)
            .then(|| format!("{name} failed {} probes in a row: {}", self.failures, why()))
    }

    fn record(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                *self = Self {
                    answered: true,
                    failures: 0,
                    error: None,
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.error = Some(e);
            }
        }
    }
}

struct Dependency {
    name: String,
    probe: Probe,
    seen: Seen,
}

#[derive(Default)]
struct Inner {
    checks: Vec<(String, ReadyCheck)>,
    dependencies: Vec<Dependency>,
}

/// The readiness checks and dependencies of the services of one process;
/// cheap to clone.
#[derive(Clone)]
pub struct ReadyChecks {
    inner: Arc<Mutex<Inner>>,
    /// Bumped whenever whether the dependencies are ready changes (what
    /// the gRPC health status follows).
    changes: Arc<rt::watch::Sender<u64>>,
}

impl Default for ReadyChecks {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            changes: Arc::new(rt::watch::Sender::new(0)),
        }
    }
}

impl std::fmt::Debug for ReadyChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyChecks").finish_non_exhaustive()
    }
}

impl ReadyChecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the check of the service `name`.
    pub fn add(&self, name: &str, check: ReadyCheck) {
        self.lock().checks.push((name.to_owned(), check));
    }

    /// Adds a dependency of the process, probed once now (so a service
    /// knows whether it can serve before it reports that it does), then by
    /// [`Self::probe`]. A second dependency of the same name replaces
    /// nothing: both are probed.
    pub async fn depend(&self, name: &str, probe: Probe) {
        let mut seen = Seen::default();
        seen.record(run(&probe).await);
        if let Some(why) = seen.not_ready(name) {
            tracing::warn!(%why, "not ready");
        }
        self.lock().dependencies.push(Dependency {
            name: name.to_owned(),
            probe,
            seen,
        });
        self.changes.send_if_modified(|n| {
            *n = n.wrapping_add(1);
            true
        });
    }

    /// Probes every dependency once, all at once, each for at most
    /// [`PROBE_TIMEOUT`], and records the answers.
    pub async fn probe(&self) {
        let probes: Vec<Probe> = self
            .lock()
            .dependencies
            .iter()
            .map(|d| d.probe.clone())
            .collect();
        let results = futures::future::join_all(probes.iter().map(run)).await;
        let (before, after) = {
            let mut inner = self.lock();
            let before = dependencies_not_ready(&inner);
            for (dependency, result) in inner.dependencies.iter_mut().zip(results) {
                if let Err(e) = &result {
                    tracing::debug!(dependency = %dependency.name, error = %e, "probe failed");
                }
                dependency.seen.record(result);
            }
            (before, dependencies_not_ready(&inner))
        };
        if before.is_some() != after.is_some() {
            match &after {
                Some(why) => tracing::warn!(%why, "not ready"),
                None => tracing::info!("every dependency answers: ready"),
            }
            self.changes.send_if_modified(|n| {
                *n = n.wrapping_add(1);
                true
            });
        }
    }

    /// Probes every [`PROBE_INTERVAL`] until the task is aborted.
    pub async fn keep_probing(self) {
        loop {
            rt::sleep(PROBE_INTERVAL).await;
            self.probe().await;
        }
    }

    /// Why a dependency makes the process not ready (the first one), or
    /// `None`.
    #[must_use]
    pub fn dependencies_not_ready(&self) -> Option<String> {
        dependencies_not_ready(&self.lock())
    }

    /// Why the process is not ready: a dependency, else `"<service>:
    /// <reason>"` of the first service not ready; `None` when all are.
    #[must_use]
    pub fn not_ready(&self) -> Option<String> {
        let checks = {
            let inner = self.lock();
            if let Some(why) = dependencies_not_ready(&inner) {
                return Some(why);
            }
            inner.checks.clone()
        };
        checks
            .iter()
            .find_map(|(name, check)| check().map(|why| format!("{name}: {why}")))
    }

    /// Wakes when whether the dependencies are ready may have changed.
    #[must_use]
    pub fn watch(&self) -> rt::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Runs `probe` for at most [`PROBE_TIMEOUT`].
async fn run(probe: &Probe) -> Result<(), String> {
    match rt::timeout(PROBE_TIMEOUT, probe()).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

fn dependencies_not_ready(inner: &Inner) -> Option<String> {
    inner
        .dependencies
        .iter()
        .find_map(|d| d.seen.not_ready(&d.name))
}

/// A [`Probe`] from an async closure whose error displays.
pub fn probe<F, Fut, E>(f: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    use futures::FutureExt as _;
    Arc::new(move || f().map(|r| r.map_err(|e| e.to_string())).boxed())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn switch(up: &Arc<AtomicBool>) -> Probe {
        let up = up.clone();
        probe(move || {
            let up = up.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("refused") } }
        })
    }

    #[tokio::test]
    async fn not_ready_until_answered_then_after_repeated_failures_only() {
        let checks = ReadyChecks::default();
        assert_eq!(checks.not_ready(), None, "nothing to wait for");
        let up = Arc::new(AtomicBool::new(false));
        checks.depend("bus", switch(&up)).await;
        assert_eq!(
            checks.not_ready().as_deref(),
            Some("bus has not answered yet: refused")
        );
        checks.probe().await;
        assert_eq!(
            checks.not_ready().as_deref(),
            Some("bus has not answered yet: refused")
        );
        up.store(true, Ordering::SeqCst);
        checks.probe().await;
        assert_eq!(checks.not_ready(), None);
        up.store(false, Ordering::SeqCst);
        checks.probe().await;
        assert_eq!(checks.not_ready(), None, "one failed probe is tolerated");
        checks.probe().await;
        assert_eq!(
            checks.not_ready().as_deref(),
            Some("bus failed 2 probes in a row: refused")
        );
        up.store(true, Ordering::SeqCst);
        checks.probe().await;
        assert_eq!(checks.not_ready(), None);
    }

    #[tokio::test]
    async fn a_hung_probe_fails_by_the_timeout_and_others_still_count() {
        tokio::time::pause();
        let checks = ReadyChecks::default();
        let up = Arc::new(AtomicBool::new(true));
        checks.depend("registry", switch(&up)).await;
        checks
            .depend(
                "database",
                probe(|| async {
                    futures::future::pending::<()>().await;
                    Ok::<(), String>(())
                }),
            )
            .await;
        checks.probe().await;
        assert_eq!(
            checks.not_ready().as_deref(),
            Some("database has not answered yet: no answer within 2s")
        );
        assert_eq!(
            checks.dependencies_not_ready(),
            checks.not_ready(),
            "the registry answered"
        );
    }

    #[tokio::test]
    async fn dependencies_come_before_service_checks_and_changes_wake_watchers() {
        let checks = ReadyChecks::default();
        checks.add("gateway", Arc::new(|| Some("saturated".to_owned())));
        assert_eq!(checks.not_ready().as_deref(), Some("gateway: saturated"));
        let mut changes = checks.watch();
        let up = Arc::new(AtomicBool::new(false));
        checks.depend("blob store", switch(&up)).await;
        changes.changed().await.expect("open");
        drop(changes.borrow_and_update());
        assert!(
            checks
                .not_ready()
                .expect("waiting")
                .starts_with("blob store")
        );
        up.store(true, Ordering::SeqCst);
        checks.probe().await;
        changes.changed().await.expect("open");
        assert_eq!(checks.not_ready().as_deref(), Some("gateway: saturated"));
        assert_eq!(checks.dependencies_not_ready(), None);
    }
}
