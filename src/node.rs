//! One StreamGate process: options, and [`run`], which starts the kernel
//! with the chosen services and stops it when asked.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::bus::memory::MemoryBus;
use crate::kernel::{Kernel, KernelError, Mode, Plugin, ServiceKind, ServicePlugin};
use crate::registry::memory::MemoryRegistry;
use crate::services::ServiceOpts;

/// Options of a process (validated by [`NodeOpts::service_opts`]).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NodeOpts {
    /// Address every service listens on.
    #[arg(long, env = "STREAMGATE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Added to every default port (e.g. 1000: the gateway on 10090), to run
    /// a second copy beside the first.
    #[arg(long, env = "STREAMGATE_PORT_OFFSET", default_value_t = 0)]
    pub port_offset: u16,
}

impl NodeOpts {
    /// The options of each service of `kinds`.
    ///
    /// # Errors
    /// [`KernelError::Config`] when an offset port would pass 65535.
    pub fn service_opts(&self, kinds: &[ServiceKind]) -> Result<Vec<ServiceOpts>, KernelError> {
        kinds
            .iter()
            .map(|&kind| {
                let port = kind
                    .default_port()
                    .checked_add(self.port_offset)
                    .ok_or_else(|| KernelError::Config {
                        plugin: kind.name().to_owned(),
                        reason: format!(
                            "port {} + offset {} > 65535",
                            kind.default_port(),
                            self.port_offset
                        ),
                    })?;
                let mut opts = ServiceOpts::new(kind, self.host);
                opts.listen = SocketAddr::new(self.host, port);
                Ok(opts)
            })
            .collect()
    }
}

/// Runs `kinds` in this process until `shutdown` resolves, then stops them
/// gracefully. The monolith runs all nine on an in-memory bus and registry.
///
/// # Errors
/// A service failed to start.
pub async fn run(
    mode: Mode,
    opts: &NodeOpts,
    kinds: &[ServiceKind],
    shutdown: impl Future<Output = ()>,
) -> Result<(), KernelError> {
    let plugins: Vec<Box<dyn Plugin>> = opts
        .service_opts(kinds)?
        .into_iter()
        .map(|o| Box::new(ServicePlugin::new(o)) as Box<dyn Plugin>)
        .collect();
    let kernel = match mode {
        Mode::Monolith => {
            Kernel::start(
                Arc::new(MemoryBus::new()),
                Arc::new(MemoryRegistry::new()),
                plugins,
            )
            .await?
        }
        Mode::Microservices => {
            return Err(KernelError::Config {
                plugin: "kernel".to_owned(),
                reason: "microservices mode needs the NATS bus and a networked registry, \
                         which this build does not have yet; run `streamgate monolith`"
                    .to_owned(),
            });
        }
    };
    tracing::info!(services = kernel.registrations().len(), "streamgate is up");
    shutdown.await;
    tracing::info!("shutting down");
    kernel.shutdown().await;
    Ok(())
}
