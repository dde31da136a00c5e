//! monitor (9009): probes every service's instances with the standard gRPC
//! health check, counts the events on the bus, and raises damped alerts
//! (published as AlertTriggered / AlertResolved) when a service is down.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;

use crate::bus::{EventType, handler};
use crate::kernel::{KernelError, Runtime};
use crate::proto::monitor_service_server::MonitorServiceServer;
use crate::rt;
use crate::services::ServiceKind;
use crate::services::{Background, Common, Domain, media};

pub mod alerts;
pub mod book;
pub mod error;
pub mod health;
pub mod probe;
pub mod rates;
pub mod server;
pub mod state;

pub use error::MonitorError;
pub use server::MonitorServer;
pub use state::Monitor;

/// Time between two probe rounds by default.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Deadline of one health check (and of one discovery) by default.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Alert watches open at once, at most, by default.
pub const MAX_WATCHERS: usize = 64;
/// Longest one alert watch lasts by default; the client may watch again.
pub const MAX_WATCH: Duration = Duration::from_secs(3600);
/// Most services one monitor follows.
pub const MAX_SERVICES: usize = 64;

/// How the monitor works (data; validated by [`domain_with`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The services followed, by registry name (default: all nine).
    pub services: Vec<String>,
    /// Time between two probe rounds.
    pub probe_interval: Duration,
    /// Deadline of one health check or discovery; below the interval.
    pub probe_timeout: Duration,
    /// How alerts are damped.
    pub damping: alerts::Damping,
    /// Alerts kept (the oldest resolved go first).
    pub max_alerts: usize,
    /// Alert watches open at once.
    pub max_watchers: usize,
    /// Longest one alert watch lasts.
    pub max_watch: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            services: ServiceKind::ALL
                .iter()
                .map(|k| k.name().to_owned())
                .collect(),
            probe_interval: PROBE_INTERVAL,
            probe_timeout: PROBE_TIMEOUT,
            damping: alerts::Damping::default(),
            max_alerts: book::MAX_ALERTS,
            max_watchers: MAX_WATCHERS,
            max_watch: MAX_WATCH,
        }
    }
}

impl Config {
    /// Checks the configuration.
    ///
    /// # Errors
    /// What is wrong, for people.
    pub fn validate(&self) -> Result<(), String> {
        if self.services.is_empty() || self.services.len() > MAX_SERVICES {
            return Err(format!("services: 1..={MAX_SERVICES} names"));
        }
        for name in &self.services {
            media::check_id("services", name)?;
        }
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return Err("probe interval and timeout must be positive".into());
        }
        if self.probe_timeout > self.probe_interval {
            return Err("probe timeout must not exceed the interval".into());
        }
        if self.max_alerts < MAX_SERVICES || self.max_watchers == 0 {
            return Err(format!(
                "max_alerts below {MAX_SERVICES}, or no alert watch allowed"
            ));
        }
        Ok(())
    }
}

/// The service's routes and background work.
///
/// # Errors
/// `config` is invalid, or the bus refuses the subscriptions.
pub async fn domain(
    config: &Config,
    _common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    config.validate().map_err(|reason| KernelError::Config {
        plugin: "monitor".to_owned(),
        reason,
    })?;
    let monitor = Arc::new(Monitor::new(config.clone()));

    let mut subscriptions = Vec::with_capacity(EventType::ALL.len());
    for kind in EventType::ALL {
        let counter = monitor.clone();
        let count = handler(move |event| {
            counter.record_event(&event.source, event.kind);
            async { Ok(()) }
        });
        let sub = runtime
            .bus
            .subscribe(kind.subject(), None, count)
            .await
            .map_err(|e| KernelError::start("monitor", "the event bus", e))?;
        subscriptions.push(sub);
    }
    let prober = rt::spawn(probe::run(monitor.clone(), runtime.clone()));

    let svc = MonitorServiceServer::new(MonitorServer::new(monitor));
    Ok(Domain {
        routes: Routes::new(svc),
        grpc_names: vec![
            <MonitorServiceServer<MonitorServer> as tonic::server::NamedService>::NAME,
        ],
        background: Background {
            subscriptions,
            tasks: vec![prober],
            ..Background::default()
        },
        ..Domain::default()
    })
}

#[cfg(test)]
mod tests;
