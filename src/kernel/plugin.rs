//! Adapts a service ([`crate::services::start`]) to the kernel's [`Plugin`] lifecycle.

use async_trait::async_trait;

use super::{KernelError, Plugin, Runtime};
use crate::registry::ServiceInfo;
use crate::services::{self, RunningService, ServiceOpts};

/// One service run as a kernel plugin.
#[derive(Debug)]
pub struct ServicePlugin {
    opts: ServiceOpts,
    running: Option<RunningService>,
}

impl ServicePlugin {
    /// A plugin for the service `opts.kind`.
    #[must_use]
    pub fn new(opts: ServiceOpts) -> Self {
        Self {
            opts,
            running: None,
        }
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
        self.opts.kind.name()
    }

    async fn init(&mut self, _rt: &Runtime) -> Result<(), KernelError> {
        if self.opts.check_interval.is_zero() {
            return Err(KernelError::Config {
                plugin: self.name().to_owned(),
                reason: "check interval must be positive".to_owned(),
            });
        }
        Ok(())
    }

    async fn start(&mut self, rt: &Runtime) -> Result<(), KernelError> {
        self.running = Some(services::start(&self.opts, rt).await?);
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
