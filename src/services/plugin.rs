//! A service run as a kernel [`Plugin`]: the one adapter between the
//! kernel's lifecycle and [`super::start`].

use async_trait::async_trait;

use super::host::{Common, RunningService};
use super::{ServiceConfig, ServiceKind};
use crate::kernel::{KernelError, Plugin, Runtime};
use crate::registry::ServiceInfo;

/// One service run as a kernel plugin.
#[derive(Debug)]
pub struct ServicePlugin {
    common: Common,
    config: ServiceConfig,
    running: Option<RunningService>,
}

impl ServicePlugin {
    /// A plugin for the service `config` configures.
    #[must_use]
    pub fn new(common: Common, config: impl Into<ServiceConfig>) -> Self {
        Self {
            common,
            config: config.into(),
            running: None,
        }
    }

    /// Its instance settings, to adjust before it starts.
    pub fn common_mut(&mut self) -> &mut Common {
        &mut self.common
    }

    /// Its config, to adjust before it starts.
    pub fn config_mut(&mut self) -> &mut ServiceConfig {
        &mut self.config
    }

    /// Which service.
    #[must_use]
    pub fn kind(&self) -> ServiceKind {
        self.config.kind()
    }

    /// The address it listens on, once started.
    #[must_use]
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref().map(RunningService::local_addr)
    }
}

#[async_trait]
impl Plugin for ServicePlugin {
    fn name(&self) -> &str {
        self.kind().name()
    }

    async fn init(&mut self, _runtime: &Runtime) -> Result<(), KernelError> {
        let invalid = |reason: String| KernelError::Config {
            plugin: self.kind().name().to_owned(),
            reason,
        };
        if self.common.check_interval.is_zero() {
            return Err(invalid("check interval must be positive".to_owned()));
        }
        self.config.validate().map_err(invalid)
    }

    async fn start(&mut self, runtime: &Runtime) -> Result<(), KernelError> {
        self.running = Some(super::start(&self.config, &self.common, runtime).await?);
        Ok(())
    }

    fn registration(&self) -> Option<ServiceInfo> {
        self.running.as_ref().map(|r| r.info().clone())
    }

    async fn prepare_stop(&mut self) {
        if let Some(running) = &self.running {
            running.set_not_serving().await;
        }
    }

    async fn stop(&mut self) -> Result<(), KernelError> {
        match self.running.take() {
            Some(running) => running.stop().await,
            None => Ok(()),
        }
    }
}
