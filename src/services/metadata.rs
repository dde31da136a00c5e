//! metadata (9005): the video catalog (SQLite) and its state machine, fed by the pipeline's events.

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
