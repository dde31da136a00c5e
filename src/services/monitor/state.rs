//! The monitor's shared state: the probe loop writes each round's verdicts
//! into it (alert transitions come out), the event consumers count into
//! it, and the gRPC server reads snapshots and subscribes to alert changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use super::Config;
use super::alerts::{Change, Damper};
use super::book::{Book, Filter, Record, Unknown};
use super::health::Health;
use super::rates::{self, Rates};
use crate::bus::EventType;
use crate::bus::events::{AlertResolved, AlertTriggered};
use crate::proto;
use crate::rt;

/// Alert changes buffered per watcher before it counts as fallen behind.
pub const WATCH_BUFFER: usize = 256;

/// One circuit breaker of this node's pool towards an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerView {
    /// The instance (its id, reduced to `[A-Za-z0-9_-]`, at most 64).
    pub target: String,
    /// Its state.
    pub state: proto::BreakerState,
    /// When it opened, Unix ms; 0 unless open.
    pub opened_at_ms: u64,
    /// Failures in a row since the last success.
    pub consecutive_failures: u32,
}

/// What one probe round found about one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The service.
    pub service: String,
    /// Instances probed.
    pub instances: usize,
    /// Of which answered SERVING.
    pub serving: usize,
    /// This node's breakers towards its instances.
    pub breakers: Vec<BreakerView>,
}

impl Observation {
    /// The service's health.
    #[must_use]
    pub fn health(&self) -> Health {
        Health::of(self.serving, self.instances)
    }
}

/// The latest view of one service.
#[derive(Debug, Clone, Default)]
struct Seen {
    health: Option<Health>,
    last_seen_ms: u64,
    breakers: Vec<BreakerView>,
}

/// An event to publish for an alert transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// An alert fired.
    Triggered(AlertTriggered),
    /// An alert resolved.
    Resolved(AlertResolved),
}

struct Inner {
    services: BTreeMap<String, Seen>,
    damper: Damper,
    book: Book,
    rates: Rates,
}

/// The monitor's state; shared by its loop, consumers and server.
pub struct Monitor {
    cfg: Config,
    started: rt::Instant,
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Record>,
    watchers: Arc<Semaphore>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// An empty monitor of `cfg.services`.
    #[must_use]
    pub fn new(cfg: Config) -> Self {
        let inner = Inner {
            services: cfg
                .services
                .iter()
                .map(|s| (s.clone(), Seen::default()))
                .collect(),
            damper: Damper::new(cfg.damping),
            book: Book::new(cfg.max_alerts),
            rates: Rates::new(cfg.services.iter().map(String::as_str)),
        };
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            watchers: Arc::new(Semaphore::new(cfg.max_watchers)),
            cfg,
            started: rt::now(),
            inner: Mutex::new(inner),
            changes,
        }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Milliseconds since the monitor started (the alert machine's clock).
    fn mono_ms(&self) -> u64 {
        let elapsed = rt::now().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts an event of `kind` published by `source`.
    pub fn record_event(&self, source: &str, kind: EventType) {
        let now_s = self.mono_ms() / 1000;
        self.lock().rates.record(source, kind, now_s);
    }

    /// Takes one probe round's observations; returns the events to
    /// publish for the alert transitions they caused.
    pub fn apply(&self, round: Vec<Observation>) -> Vec<Outgoing> {
        let (mono, unix) = (self.mono_ms(), rt::unix_ms());
        let mut out = Vec::new();
        let mut changed = Vec::new();
        let mut inner = self.lock();
        for obs in round {
            let health = obs.health();
            let Some(seen) = inner.services.get_mut(&obs.service) else {
                continue; // not a monitored service: keeps memory bounded
            };
            seen.health = Some(health);
            seen.breakers = obs.breakers.clone();
            if obs.serving > 0 {
                seen.last_seen_ms = unix;
            }
            let Some(change) = inner.damper.observe(&obs.service, health, mono) else {
                continue;
            };
            let service = obs.service.clone();
            match change {
                Change::Triggered(severity) => {
                    let what = if health == Health::Degraded {
                        "is degraded"
                    } else {
                        "is not serving"
                    };
                    let title = format!("{service} {what}");
                    let detail = format!(
                        "{} of {} instances answer SERVING, for {} probes in a row",
                        obs.serving, obs.instances, self.cfg.damping.trigger_after
                    );
                    let r = inner.book.raise(
                        rt::random_hex128(),
                        &service,
                        severity,
                        title.clone(),
                        detail,
                        unix,
                    );
                    out.push(Outgoing::Triggered(AlertTriggered {
                        alert_id: r.id.clone(),
                        service_name: service,
                        severity: r.severity.name().to_owned(),
                        summary: title,
                    }));
                    changed.push(r.clone());
                }
                Change::Escalated(severity) => {
                    if let Some(r) = inner.book.escalate(&service, severity) {
                        changed.push(r.clone());
                    }
                }
                Change::Resolved => {
                    if let Some(r) = inner.book.resolve(&service, unix) {
                        out.push(Outgoing::Resolved(AlertResolved {
                            alert_id: r.id.clone(),
                            service_name: service,
                        }));
                        changed.push(r.clone());
                    }
                }
            }
        }
        drop(inner);
        for r in changed {
            // No watcher is not an error.
            let _ = self.changes.send(r);
        }
        out
    }

    /// The platform's status now.
    #[must_use]
    pub fn status(&self) -> proto::GetStatusResponse {
        let now_s = self.mono_ms() / 1000;
        let inner = self.lock();
        let services: Vec<proto::ServiceStatus> = inner
            .services
            .iter()
            .map(|(name, seen)| proto::ServiceStatus {
                name: name.clone(),
                health: seen
                    .health
                    .map_or(proto::ServiceHealth::Unspecified, Health::to_proto)
                    .into(),
                breakers: seen
                    .breakers
                    .iter()
                    .map(|b| proto::BreakerStatus {
                        target: b.target.clone(),
                        state: b.state.into(),
                        consecutive_failures: b.consecutive_failures,
                        opened_at_ms: ms(b.opened_at_ms),
                    })
                    .collect(),
                event_rates: inner
                    .rates
                    .of(name, now_s)
                    .into_iter()
                    .map(|r| proto::EventRate {
                        event_type: rates::type_name(r.kind),
                        count_last_minute: r.last_minute,
                        per_second: r.per_second,
                    })
                    .collect(),
                last_seen_at_ms: ms(seen.last_seen_ms),
                version: String::new(),
            })
            .collect();
        let overall = inner
            .services
            .values()
            .filter_map(|s| s.health)
            .max()
            .map_or(proto::ServiceHealth::Unspecified, Health::to_proto);
        proto::GetStatusResponse {
            overall: overall.into(),
            services,
            firing_alerts: u32::try_from(inner.book.firing_count()).unwrap_or(u32::MAX),
            generated_at_ms: ms(rt::unix_ms()),
        }
    }

    /// A page of alerts (see [`Book::page`]), in protocol form.
    #[must_use]
    pub fn alerts(
        &self,
        filter: Filter,
        before: Option<u64>,
        limit: usize,
    ) -> (Vec<proto::Alert>, Option<u64>) {
        let inner = self.lock();
        let (page, next) = inner.book.page(filter, before, limit);
        (page.into_iter().map(Record::to_proto).collect(), next)
    }

    /// Acknowledges alert `id` (idempotent; watchers hear of the first).
    ///
    /// # Errors
    /// [`Unknown`] when no such alert is held.
    pub fn acknowledge(&self, id: &str, by: &str) -> Result<proto::Alert, Unknown> {
        let mut inner = self.lock();
        let (r, changed) = inner.book.acknowledge(id, by, rt::unix_ms())?;
        let r = r.clone();
        drop(inner);
        if changed {
            let _ = self.changes.send(r.clone());
        }
        Ok(r.to_proto())
    }

    /// Opens an alert watch: a slot (at most `max_watchers` at once), the
    /// live changes, and the alerts firing now (subscribed first, so none
    /// is missed between the two). `None` when every slot is taken.
    #[must_use]
    pub fn watch(
        &self,
    ) -> Option<(
        OwnedSemaphorePermit,
        broadcast::Receiver<Record>,
        Vec<Record>,
    )> {
        let permit = self.watchers.clone().try_acquire_owned().ok()?;
        let rx = self.changes.subscribe();
        let firing = self.lock().book.firing().cloned().collect();
        Some((permit, rx, firing))
    }
}

fn ms(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::monitor::alerts::Damping;

    fn obs(service: &str, instances: usize, serving: usize) -> Observation {
        Observation {
            service: service.into(),
            instances,
            serving,
            breakers: Vec::new(),
        }
    }

    #[tokio::test]
    async fn rounds_raise_and_resolve_alerts_and_status_shows_them() {
        let cfg = Config {
            services: vec!["cache".into(), "metadata".into()],
            damping: Damping::default(),
            ..Config::default()
        };
        let monitor = Monitor::new(cfg);
        let status = monitor.status();
        assert_eq!(status.overall, proto::ServiceHealth::Unspecified as i32);
        let (_permit, mut rx, firing) = monitor.watch().expect("a slot");
        assert!(firing.is_empty());

        assert!(
            monitor
                .apply(vec![obs("cache", 1, 1), obs("metadata", 2, 1)])
                .is_empty()
        );
        let status = monitor.status();
        assert_eq!(status.overall, proto::ServiceHealth::Degraded as i32);
        assert_eq!(status.services[0].name, "cache");
        assert!(status.services[0].last_seen_at_ms > 0);
        let out = monitor.apply(vec![
            obs("cache", 0, 0),
            obs("metadata", 2, 1),
            obs("other", 1, 0),
        ]);
        let Some(Outgoing::Triggered(t)) = out.first() else {
            panic!("metadata degraded twice: {out:?}");
        };
        assert_eq!(
            (t.service_name.as_str(), t.severity.as_str()),
            ("metadata", "warning")
        );
        assert_eq!(rx.try_recv().unwrap().id, t.alert_id);
        let out = monitor.apply(vec![obs("cache", 0, 0), obs("metadata", 2, 2)]);
        assert!(matches!(&out[..], [Outgoing::Triggered(c)] if c.service_name == "cache"));
        assert_eq!(monitor.status().firing_alerts, 2);
        assert_eq!(
            monitor.status().overall,
            proto::ServiceHealth::NotServing as i32
        );

        let acked = monitor.acknowledge(&t.alert_id, "ops").unwrap();
        assert!(acked.acknowledged);
        assert!(monitor.acknowledge("nope", "ops").is_err());
        assert!(monitor.apply(vec![obs("metadata", 2, 2)]).is_empty());
        let out = monitor.apply(vec![obs("metadata", 1, 1)]);
        assert_eq!(
            out,
            [Outgoing::Resolved(AlertResolved {
                alert_id: t.alert_id.clone(),
                service_name: "metadata".into()
            })]
        );
        let (page, _) = monitor.alerts(Filter::default(), None, 10);
        assert_eq!(page.len(), 1, "only cache still fires");
    }

    #[tokio::test]
    async fn watch_slots_are_bounded() {
        let monitor = Monitor::new(Config {
            max_watchers: 1,
            ..Config::default()
        });
        let first = monitor.watch();
        assert!(first.is_some());
        assert!(monitor.watch().is_none());
        drop(first);
        assert!(monitor.watch().is_some());
    }

    #[tokio::test]
    async fn counts_events_of_known_sources() {
        let monitor = Monitor::new(Config::default());
        monitor.record_event("upload", EventType::FileUploaded);
        monitor.record_event("stranger", EventType::FileUploaded);
        let status = monitor.status();
        let upload = status.services.iter().find(|s| s.name == "upload").unwrap();
        assert_eq!(upload.event_rates.len(), 1);
        assert_eq!(upload.event_rates[0].event_type, "file_uploaded");
        assert_eq!(upload.event_rates[0].count_last_minute, 1);
    }
}
