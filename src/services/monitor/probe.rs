//! The probe loop: every interval, for each monitored service, take its
//! instances from a registry watch (blocking queries, so the registry is
//! not polled), ask each the standard gRPC health check (short deadline),
//! read this node's breakers towards them, hand the round to the
//! [`Monitor`] and publish the alert events it returns. While a service's
//! watch fails, a slow poll ([`FALLBACK_POLL_INTERVAL`]) stands in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::state::{BreakerView, Monitor, Observation, Outgoing};
use crate::bus::events;
use crate::client::balanced::Endpoint;
use crate::kernel::Runtime;
use crate::proto;
use crate::registry::ServiceInfo;
use crate::registry::watcher::{WatchPolicy, Watcher};
use crate::resilience::breaker::State;
use crate::rt::{self, transport};

/// Most instances of one service probed in a round (the registry is input
/// from outside; the rest count as not probed).
pub const MAX_INSTANCES: usize = 64;
/// The `source` of the events the monitor publishes.
pub const SOURCE: &str = "monitor";
/// How often a service is discovered by a plain query while its watch
/// fails (or before its first answer).
pub const FALLBACK_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Where each round finds the instances: one watch per service, and the
/// last fallback poll of each service whose watch is not current.
struct Discovery {
    watchers: BTreeMap<String, Watcher>,
    polled: BTreeMap<String, (rt::Instant, Option<Vec<ServiceInfo>>)>,
}

impl Discovery {
    fn new(runtime: &Runtime, services: &[String]) -> Self {
        let watchers = services
            .iter()
            .map(|name| {
                let watcher =
                    Watcher::spawn(runtime.registry.clone(), name, WatchPolicy::default());
                (name.clone(), watcher)
            })
            .collect();
        Self {
            watchers,
            polled: BTreeMap::new(),
        }
    }

    /// The instances of each of `names` (in order): the watch's set while
    /// it is current, else the last poll, polling again (all at once) those
    /// older than [`FALLBACK_POLL_INTERVAL`]; `None` when nothing is known.
    async fn instances(
        &mut self,
        runtime: &Runtime,
        names: &[String],
        timeout: Duration,
    ) -> Vec<Option<Vec<ServiceInfo>>> {
        let now = rt::now();
        let current: Vec<Option<Vec<ServiceInfo>>> = names
            .iter()
            .map(|name| self.watchers.get(name).and_then(Watcher::current))
            .collect();
        let due: Vec<&String> = names
            .iter()
            .zip(&current)
            .filter(|(name, set)| {
                set.is_none()
                    && self.polled.get(*name).is_none_or(|(at, _)| {
                        now.saturating_duration_since(*at) >= FALLBACK_POLL_INTERVAL
                    })
            })
            .map(|(name, _)| name)
            .collect();
        let polls = join_all(due.iter().map(|name| async move {
            match rt::timeout(timeout, runtime.registry.discover(name)).await {
                Ok(Ok(set)) => Some(set),
                Ok(Err(e)) => {
                    tracing::warn!(service = %name, error = %e, "monitor: discovery failed");
                    None
                }
                Err(rt::Elapsed) => {
                    tracing::warn!(service = %name, "monitor: discovery timed out");
                    None
                }
            }
        }))
        .await;
        for (name, found) in due.into_iter().zip(polls) {
            self.polled.insert(name.clone(), (now, found));
        }
        names
            .iter()
            .zip(current)
            .map(|(name, set)| match set {
                Some(set) => {
                    self.polled.remove(name);
                    Some(set)
                }
                None => self.polled.get(name).and_then(|(_, set)| set.clone()),
            })
            .collect()
    }
}

/// Channels to the instances probed last round, by instance id (kept so
/// that each probe does not open a new connection).
#[derive(Default)]
struct Channels {
    by_id: BTreeMap<String, (SocketAddr, transport::Channel)>,
}

impl Channels {
    /// A channel to instance `id` of `service` at `addr`: over mutual TLS
    /// with `tls` when on, except to the gateway, whose port is the public
    /// edge (HTTP and its gRPC health, no client certificates).
    fn get(
        &mut self,
        id: &str,
        addr: SocketAddr,
        service: &str,
        tls: Option<&transport::Mtls>,
    ) -> transport::Channel {
        match self.by_id.get(id) {
            Some((known, channel)) if *known == addr => channel.clone(),
            _ => {
                let tls =
                    tls.filter(|_| service != crate::services::ServiceKind::ApiGateway.name());
                let channel = transport::channel_to(addr, tls, service);
                self.by_id.insert(id.to_owned(), (addr, channel.clone()));
                channel
            }
        }
    }
}

/// Runs rounds every `probe_interval` until aborted.
pub async fn run(monitor: Arc<Monitor>, runtime: Runtime) {
    let mut channels = Channels::default();
    let mut discovery = Discovery::new(&runtime, &monitor.config().services);
    let interval = monitor.config().probe_interval;
    loop {
        let started = rt::now();
        let observed = round(&monitor, &runtime, &mut discovery, &mut channels).await;
        for out in monitor.apply(observed) {
            publish(&runtime, &monitor, out).await;
        }
        rt::sleep_until(started + interval).await;
    }
}

/// One round over every monitored service; a service whose instances are
/// unknown (its watch failing and its fallback poll too) is left out (a
/// registry outage says nothing about the service).
async fn round(
    monitor: &Monitor,
    runtime: &Runtime,
    discovery: &mut Discovery,
    channels: &mut Channels,
) -> Vec<Observation> {
    let cfg = monitor.config();
    let found: Vec<Option<(String, Vec<ServiceInfo>)>> = discovery
        .instances(runtime, &cfg.services, cfg.probe_timeout)
        .await
        .into_iter()
        .zip(&cfg.services)
        .map(|(set, name)| {
            let mut instances = set?;
            instances.sort_by(|a, b| a.id.cmp(&b.id));
            instances.truncate(MAX_INSTANCES);
            Some((name.clone(), instances))
        })
        .collect();

    let mut seen = BTreeSet::new();
    let mut probes = Vec::new();
    for (name, instances) in found.into_iter().flatten() {
        let targets: Vec<Option<transport::Channel>> = instances
            .iter()
            .map(|info| {
                let addr = addr_of(info)?;
                seen.insert(info.id.clone());
                Some(channels.get(&info.id, addr, &name, runtime.pool.tls()))
            })
            .collect();
        probes.push((name, targets));
    }
    channels.by_id.retain(|id, _| seen.contains(id));

    let timeout = cfg.probe_timeout;
    join_all(probes.into_iter().map(|(service, targets)| async move {
        let instances = targets.len();
        let answers = join_all(targets.into_iter().map(|target| async move {
            match target {
                Some(channel) => check(channel, timeout).await,
                None => false,
            }
        }))
        .await;
        Observation {
            breakers: breakers(&runtime.pool.endpoints(&service)),
            serving: answers.into_iter().filter(|up| *up).count(),
            instances,
            service,
        }
    }))
    .await
}

fn addr_of(info: &ServiceInfo) -> Option<SocketAddr> {
    let ip: IpAddr = info.address.parse().ok()?;
    Some(SocketAddr::new(ip, info.port))
}

/// Whether the instance behind `channel` answers SERVING within `timeout`.
async fn check(channel: transport::Channel, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(timeout);
    matches!(
        rt::timeout(timeout, client.check(req)).await,
        Ok(Ok(res)) if res.get_ref().status == ServingStatus::Serving as i32
    )
}

/// This node's breakers towards `endpoints`.
fn breakers(endpoints: &[Arc<Endpoint>]) -> Vec<BreakerView> {
    let (now, unix) = (rt::now(), rt::unix_ms());
    endpoints
        .iter()
        .take(MAX_INSTANCES)
        .map(|e| {
            let (breaker, consecutive_failures) = e.breaker_view();
            let (state, opened_at_ms) = match breaker {
                State::Closed => (proto::BreakerState::Closed, 0),
                State::HalfOpen { .. } => (proto::BreakerState::HalfOpen, 0),
                State::Open { until, interval } => {
                    let opened = until.checked_sub(interval).unwrap_or(until);
                    let age = now.saturating_duration_since(opened);
                    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                    (proto::BreakerState::Open, unix.saturating_sub(age_ms))
                }
            };
            BreakerView {
                target: target_name(&e.id),
                state,
                opened_at_ms,
                consecutive_failures,
            }
        })
        .collect()
}

/// An instance id as a breaker target: `[A-Za-z0-9_-]`, at most 64 chars.
fn target_name(id: &str) -> String {
    id.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

async fn publish(runtime: &Runtime, monitor: &Monitor, out: Outgoing) {
    let timeout = monitor.config().probe_timeout;
    let sent = match &out {
        Outgoing::Triggered(p) => {
            tracing::warn!(service = %p.service_name, alert = %p.alert_id, severity = %p.severity, "alert: {}", p.summary);
            rt::timeout(timeout, events::publish(runtime.bus.as_ref(), SOURCE, p)).await
        }
        Outgoing::Resolved(p) => {
            tracing::info!(service = %p.service_name, alert = %p.alert_id, "alert resolved");
            rt::timeout(timeout, events::publish(runtime.bus.as_ref(), SOURCE, p)).await
        }
    };
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "monitor: alert event not published"),
        Err(rt::Elapsed) => tracing::warn!("monitor: alert event publish timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_ids() {
        assert_eq!(target_name("cache-127.0.0.1-9006"), "cache-127-0-0-1-9006");
        assert_eq!(target_name(&"x".repeat(100)).len(), 64);
        assert!(crate::services::media::check_id("t", &target_name("a:b/c")).is_ok());
    }
}
