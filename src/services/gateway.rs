//! api-gateway (9090): the HTTP front door; reaches every other service through the client pool.

use crate::kernel::{KernelError, Runtime};
use crate::services::{Domain, ServiceOpts};

/// The service's routes and background work.
///
/// # Errors
/// Its store cannot be opened.
#[allow(clippy::unused_async)]
pub async fn domain(_opts: &ServiceOpts, _rt: &Runtime) -> Result<Domain, KernelError> {
    Ok(Domain::default())
}
